{{ config(enabled=var('replay_marts', false), schema='replay', materialized='table', tags=['replay']) }}
with f as (
{{ tolerant_source('replay', 'execution_fills', [
    'as_of date', 'fill_id varchar', 'order_id varchar', 'symbol varchar', 'side varchar', 'qty double',
    'price double', 'fees double', 'slippage_bps double'
]) }}
)
select *, qty * price as notional from f
