{{ tolerant_source('warehouse', 'quality_flags', [
    'as_of date', 'symbol varchar', 'session date', 'flag varchar', 'reason_code varchar',
    'value double', 'detail varchar'
]) }}
