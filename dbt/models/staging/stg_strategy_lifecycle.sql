{{ tolerant_source('warehouse', 'strategy_lifecycle', [
    'as_of date', 'strategy_id varchar', 'model varchar', 'stage varchar', 'previous_stage varchar',
    'stage_since date', 'capital_multiplier double', 'nav_cap double', 'effective_cap double',
    'proving boolean', 'reason_codes varchar'
]) }}
