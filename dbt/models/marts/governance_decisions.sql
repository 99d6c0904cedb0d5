-- Every governance decision in one table (§H3–H5, §J2): the pre-trade policy and vetoes
-- (warehouse governance_decisions), human review decisions (ledger review_queue) and trading
-- state changes (ledger trading_state). `kind` tells them apart; `actor` is who decided.
with policy as (
  select
    coalesce(decision_id, {{ key(['as_of', 'coalesce(order_id, candidate_id, symbol)', 'stage']) }}) as decision_id,
    'POLICY' as kind,
    as_of,
    coalesce(decided_at, cast(as_of as timestamp)) as decided_at,
    coalesce(actor, 'governance') as actor,
    coalesce(order_id, candidate_id, symbol) as subject,
    symbol,
    case when vetoed then 'REJECT' else decision end as decision,
    vetoed,
    veto_reason,
    reason_codes,
    requested_qty,
    approved_qty,
    coalesce(stage, environment) as detail
  from {{ ref('stg_governance_decisions') }}
),
reviews as (
  select
    'review:' || item_id as decision_id,
    'REVIEW' as kind,
    cast(null as date) as as_of,
    coalesce(decided_at, created_at) as decided_at,
    coalesce(decided_by, 'review_queue') as actor,
    item_id as subject,
    symbol,
    status as decision,
    false as vetoed,
    cast(null as varchar) as veto_reason,
    reason_codes,
    qty as requested_qty,
    case when status = 'APPROVED' then qty else 0.0 end as approved_qty,
    why as detail
  from {{ ref('stg_review_queue') }}
),
trading as (
  select
    'trading_state:' || cast(id as varchar) as decision_id,
    'TRADING_STATE' as kind,
    cast(null as date) as as_of,
    ts as decided_at,
    actor,
    'trading_state' as subject,
    cast(null as varchar) as symbol,
    mode as decision,
    false as vetoed,
    cast(null as varchar) as veto_reason,
    reason_codes,
    cast(null as double) as requested_qty,
    cast(null as double) as approved_qty,
    why as detail
  from {{ ref('stg_trading_state') }}
)
select
  decision_id, kind,
  coalesce(as_of, {{ session_date('decided_at') }}) as as_of,
  decided_at, actor, subject, symbol, decision, vetoed, veto_reason, reason_codes,
  requested_qty, approved_qty, detail,
  -- a person (not the policy engine, not the system) made this call
  kind <> 'POLICY' and lower(actor) not in ('system', 'oms', 'policy', 'governance', 'review_queue')
    as is_override
from (select * from policy union all select * from reviews union all select * from trading)
