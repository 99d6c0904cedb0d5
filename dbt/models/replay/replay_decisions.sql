{{ config(enabled=var('replay_marts', false), schema='replay', materialized='table', tags=['replay']) }}
{{ tolerant_source('replay', 'governance_decisions', [
    'as_of date', 'order_id varchar', 'symbol varchar', 'decision varchar', 'reason_codes varchar',
    'review_item_id varchar', 'approval_id varchar'
]) }}
