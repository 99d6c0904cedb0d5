{{ tolerant_source('warehouse', 'model_decay_metrics', [
    'as_of date', 'symbol varchar', 'model varchar', 'model_version varchar', 'fit_date timestamp',
    'age_days bigint', 'age_factor double', 'error_n bigint', 'error_rmse double', 'error_factor double',
    'autocorr_recent double', 'autocorr_fit double', 'flip_factor double', 'decay_factor double',
    'reason_codes varchar'
]) }}
