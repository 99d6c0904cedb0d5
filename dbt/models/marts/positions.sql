-- The ledger's position snapshot, reconciled against its fills and marked at the latest
-- price known (last close, or a later fill price when the bars have not caught up).
with pos as (select * from {{ ref('stg_positions') }}),
from_fills as (
  select symbol, sum(signed_qty) as fills_qty, count(*) as fill_count, max(ts) as last_fill_at
  from {{ ref('stg_fills') }} group by 1
),
marks as (
  select symbol, session_date, price, is_close, ts from (
    select symbol, session_date, close as price, true as is_close, cast(session_date as timestamp) as ts
    from {{ ref('stg_bars') }} where close > 0
    union all
    select symbol, session_date, price, false as is_close, ts from {{ ref('stg_fills') }}
  )
  qualify row_number() over (partition by symbol order by session_date desc, is_close desc, ts desc) = 1
)
select
  coalesce(pos.symbol, ff.symbol) as symbol,
  coalesce(pos.qty, 0.0) as qty,
  pos.avg_price,
  coalesce(pos.realized_pnl, 0.0) as realized_pnl,
  coalesce(ff.fills_qty, 0.0) as fills_qty,
  coalesce(ff.fill_count, 0) as fill_count,
  abs(coalesce(pos.qty, 0.0)) >= {{ var('qty_eps') }} as is_open,
  marks.price as mark_price,
  marks.session_date as mark_date,
  case when marks.is_close then 'close' when marks.price is not null then 'last_fill' end as mark_source,
  coalesce(pos.qty, 0.0) * marks.price as market_value,
  coalesce(pos.qty, 0.0) * (marks.price - pos.avg_price) as unrealized_pnl,
  pos.updated_at, ff.last_fill_at
from pos
full outer join from_fills ff on ff.symbol = pos.symbol
left join marks on marks.symbol = coalesce(pos.symbol, ff.symbol)
