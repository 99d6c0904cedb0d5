{{ tolerant_source('ledger', 'ledger_paper_account', [
    'account_id varchar', 'starting_cash double', 'created_at timestamp'
]) }}
