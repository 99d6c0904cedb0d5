{{ config(enabled=var('replay_marts', false), schema='replay', materialized='table', tags=['replay']) }}
{{ tolerant_source('replay', 'governance_rule_hits', [
    'as_of date', 'order_id varchar', 'symbol varchar', 'rule_id varchar', 'action varchar', 'reason_code varchar'
]) }}
