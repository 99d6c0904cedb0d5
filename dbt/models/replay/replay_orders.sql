{{ config(enabled=var('replay_marts', false), schema='replay', materialized='table', tags=['replay']) }}
{{ tolerant_source('replay', 'execution_orders', [
    'as_of date', 'order_id varchar', 'client_order_id varchar', 'symbol varchar', 'side varchar',
    'qty double', 'filled_qty double', 'state varchar', 'strategy_id varchar'
]) }}
