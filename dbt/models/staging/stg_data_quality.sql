{{ tolerant_source('warehouse', 'data_quality', [
    'as_of date', 'symbol varchar', 'asset_class varchar', 'calendar varchar',
    'expected_sessions bigint', 'observed_sessions bigint', 'valid_sessions bigint', 'rejected_rows bigint',
    'missing_sessions bigint', 'duplicate_dates bigint', 'non_positive_prices bigint',
    'ohlc_inconsistent bigint', 'return_spikes bigint', 'volume_spikes bigint', 'stale_prices bigint',
    'split_like_jumps bigint', 'data_quality_score double', 'status varchar', 'reason_codes varchar',
    'tradable boolean'
]) }}
