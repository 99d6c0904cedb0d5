{{ config(enabled=var('replay_marts', false), schema='replay', materialized='table', tags=['replay']) }}
select as_of, strategy_id, stage, sector, weight
from {{ source('replay', 'replay_exposure') }}
order by as_of, strategy_id, sector
