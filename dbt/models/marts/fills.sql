-- One row per fill with its order (left join: a fill without an order stays visible, and the
-- governance test fails on it) and what the fill did to the book (core.accounting).
with f as (select * from {{ ref('stg_fills') }}),
o as (select client_order_id, symbol, side, qty, state, approval_id, expected_price from {{ ref('stg_orders') }}),
p as (select fill_id, realized_pnl, position_after, avg_cost_after, cash_flow from {{ ref('stg_fill_pnl') }})
select
  f.fill_id, f.client_order_id, f.session_date, f.ts,
  f.symbol, f.side, f.qty, f.price, f.fees, f.notional, f.signed_qty,
  o.client_order_id is not null as has_order,
  o.symbol as order_symbol, o.side as order_side, o.qty as order_qty, o.state as order_state,
  o.approval_id,
  case when o.expected_price > 0 then
    (case when f.side = 'BUY' then 1 else -1 end) * (f.price - o.expected_price) / o.expected_price * 10000
  end as slippage_bps,
  p.cash_flow, p.realized_pnl, p.position_after, p.avg_cost_after
from f
left join o on o.client_order_id = f.client_order_id
left join p on p.fill_id = f.fill_id
