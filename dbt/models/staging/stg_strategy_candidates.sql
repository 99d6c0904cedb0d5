{{ tolerant_source('warehouse', 'strategy_candidates', [
    'as_of date', 'candidate_id varchar', 'strategy_id varchar', 'symbol varchar', 'asset_class varchar',
    'sector varchar', 'status varchar', 'stage varchar', 'mu_adj double', 'sigma double', 'cvar_95 double',
    'confidence double', 'data_quality_score double', 'liquidity_score double', 'strategy_cap double',
    'reason_codes varchar'
]) }}
