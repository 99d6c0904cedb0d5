{{ tolerant_source('ledger', 'ledger_positions', [
    'symbol varchar', 'qty double', 'avg_price double', 'realized_pnl double', 'updated_at timestamp'
]) }}
