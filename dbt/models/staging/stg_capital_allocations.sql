-- The §F2 auction output. Zero rows until the portfolio assets write capital_allocations.
{{ tolerant_source('warehouse', 'capital_allocations', [
    'as_of date', 'candidate_id varchar', 'strategy_id varchar', 'symbol varchar', 'eligibility varchar',
    'allocated boolean', 'weight double', 'rank bigint', 'decision varchar', 'reason_codes varchar',
    'mu_adj double', 'cost double', 'mu_contribution double', 'liquidity_cost double',
    'cvar_contribution double', 'marginal_cvar double', 'correlation double',
    'data_quality_penalty double', 'model_decay_penalty double', 'vetoed boolean', 'veto_reason varchar',
    'cap double', 'binding_cap varchar'
]) }}
