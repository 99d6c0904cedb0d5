{{ config(enabled=var('replay_marts', false), schema='replay', materialized='table', tags=['replay']) }}
select as_of, strategy_id, previous_stage, stage, capital_multiplier, reason_codes
from {{ source('replay', 'replay_lifecycle_transitions') }}
order by as_of, strategy_id
