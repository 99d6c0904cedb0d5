-- One row per session with a fill or a close of a traded symbol, from the first fill on:
-- end-of-day NAV, P&L and drawdown of the paper book (the columns of core.metrics.pnl_history,
-- plus cash and exposure). Average-cost accounting comes from stg_fill_pnl (core.accounting);
-- marks are the session's close, or the day's last fill price when there is no close yet.
-- A test checks that this mart equals core.metrics.pnl_history on the same data.
with fills as (select * from {{ ref('stg_fill_pnl') }}),
starting as (
  select coalesce(
    (select starting_cash from {{ ref('stg_paper_account') }} order by created_at, account_id limit 1),
    cast({{ var('starting_cash') }} as double)
  ) as starting_cash
),
traded as (select symbol, min(session_date) as first_date from fills group by 1),
dates as (
  select distinct session_date from fills
  union
  select distinct b.session_date from {{ ref('stg_bars') }} b
  join traded t on t.symbol = b.symbol
  where b.session_date >= (select min(session_date) from fills)
),
grid as (select d.session_date, t.symbol from dates d cross join traded t),
book_daily as (
  -- the book after the last fill of each (symbol, session)
  select symbol, session_date, position_after, avg_cost_after
  from fills
  qualify row_number() over (partition by symbol, session_date order by ts desc, fill_id desc) = 1
),
marks_daily as (
  select symbol, session_date, price from (
    select symbol, session_date, close as price, 1 as priority, cast(null as timestamp) as ts
    from {{ ref('stg_bars') }} where close > 0
    union all
    select symbol, session_date, price, 2 as priority, ts from fills
  )
  qualify row_number() over (partition by symbol, session_date order by priority, ts desc) = 1
),
positions as (
  select g.session_date, g.symbol,
         coalesce(b.position_after, 0.0) as qty,
         coalesce(b.avg_cost_after, 0.0) as avg_cost,
         m.price as mark
  from grid g
  asof left join book_daily b on b.symbol = g.symbol and b.session_date <= g.session_date
  asof left join marks_daily m on m.symbol = g.symbol and m.session_date <= g.session_date
),
book as (
  select session_date,
         sum(case when abs(qty) >= {{ var('qty_eps') }} then qty * mark else 0.0 end) as market_value,
         sum(case when abs(qty) >= {{ var('qty_eps') }} then abs(qty * mark) else 0.0 end) as gross_exposure,
         sum(case when abs(qty) >= {{ var('qty_eps') }} then qty * (mark - avg_cost) else 0.0 end) as unrealized_pnl,
         count(*) filter (where abs(qty) >= {{ var('qty_eps') }}) as open_positions
  from positions group by 1
),
flows as (
  select d.session_date,
         coalesce(sum(f.cash_flow), 0.0) as cash_flow,
         coalesce(sum(f.realized_pnl), 0.0) as realized_pnl
  from dates d left join fills f on f.session_date = d.session_date
  group by 1
),
nav as (
  select
    fl.session_date as date,
    (select starting_cash from starting) + sum(fl.cash_flow) over w as cash,
    fl.realized_pnl,
    bk.unrealized_pnl,
    bk.market_value,
    bk.gross_exposure,
    bk.open_positions
  from flows fl join book bk using (session_date)
  window w as (order by fl.session_date rows between unbounded preceding and current row)
),
final as (
  select
    date,
    cash + market_value as nav,
    coalesce(lag(cash + market_value) over (order by date), (select starting_cash from starting)) as prev_nav,
    realized_pnl, unrealized_pnl, cash, gross_exposure, open_positions
  from nav
)
select
  date,
  nav,
  nav - prev_nav as daily_pnl,
  case when prev_nav > 0 then (nav - prev_nav) / prev_nav end as daily_return,
  realized_pnl,
  unrealized_pnl,
  1 - nav / greatest((select starting_cash from starting),
                     max(nav) over (order by date rows between unbounded preceding and current row)) as drawdown,
  greatest((select starting_cash from starting),
           max(nav) over (order by date rows between unbounded preceding and current row)) as high_water_mark,
  cash,
  gross_exposure,
  case when nav > 0 then gross_exposure / nav end as leverage,
  open_positions
from final
order by date
