{{ config(enabled=var('replay_marts', false), schema='replay', materialized='table', tags=['replay']) }}
-- From the decisions themselves (not the session rows), so the two can be checked against each other.
select
    s.session_as_of as as_of,
    count(d.order_id) filter (where d.decision = 'APPROVE') as approved,
    count(d.order_id) filter (where d.decision = 'REVIEW') as review,
    count(d.order_id) filter (where d.decision = 'REJECT') as rejected,
    count(d.order_id) filter (where d.decision = 'APPROVE') / greatest(count(d.order_id), 1) as approve_rate
from {{ source('replay', 'replay_sessions') }} s
left join {{ ref('replay_decisions') }} d on d.as_of = s.session_as_of
group by 1
order by 1
