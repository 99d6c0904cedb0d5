-- One row per order: the ledger's state next to what its fills and events say, and the
-- approval it consumed (§I1–I3). The governance tests read this mart.
with o as (select * from {{ ref('stg_orders') }}),
f as (
  select client_order_id, count(*) as fill_count, sum(qty) as fill_qty, sum(notional) as fill_notional,
         sum(fees) as fill_fees, min(ts) as first_fill_at, max(ts) as last_fill_at
  from {{ ref('stg_fills') }} group by 1
),
e as (
  select client_order_id, count(*) as event_count, max(ts) as last_event_at,
         arg_max(to_state, id) as last_event_state
  from {{ ref('stg_order_events') }} group by 1
),
a as (select * from {{ ref('stg_approvals') }})
select
  o.client_order_id, o.idempotency_key, o.approval_id,
  o.session_date, o.payload_as_of as as_of,
  o.symbol, o.side, o.qty, o.order_type, o.limit_price, o.notional, o.reduce_only, o.mode, o.state,
  o.state in ('FILLED', 'CANCELLED', 'REJECTED', 'EXPIRED') as is_terminal,
  o.broker_order_id, o.filled_qty, o.avg_fill_price, o.expected_price, o.reason_codes,
  coalesce(f.fill_count, 0) as fill_count,
  coalesce(f.fill_qty, 0.0) as fill_qty,
  coalesce(f.fill_notional, 0.0) as fill_notional,
  coalesce(f.fill_fees, 0.0) as fill_fees,
  case when f.fill_qty > 0 then f.fill_notional / f.fill_qty end as fill_vwap,
  case when f.fill_qty > 0 and o.expected_price > 0 then
    (case when o.side = 'BUY' then 1 else -1 end) * (f.fill_notional / f.fill_qty - o.expected_price)
      / o.expected_price * 10000 end as slippage_bps,
  f.first_fill_at, f.last_fill_at,
  coalesce(e.event_count, 0) as event_count, e.last_event_state,
  a.signed as approval_signed, a.expires_at as approval_expires_at,
  a.used_at as approval_used_at, a.used_by as approval_used_by,
  o.created_at, o.updated_at, o.submitted_at
from o
left join f on f.client_order_id = o.client_order_id
left join e on e.client_order_id = o.client_order_id
left join a on a.approval_id = o.approval_id
