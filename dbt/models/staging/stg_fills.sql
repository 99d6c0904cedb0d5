with src as (
  {{ tolerant_source('ledger', 'ledger_fills', [
      'fill_id varchar', 'client_order_id varchar', 'symbol varchar', 'side varchar', 'qty double',
      'price double', 'fees double', 'ts timestamp'
  ]) }}
)
select
  fill_id, client_order_id, symbol, side, qty, price, fees, ts,
  qty * price as notional,
  case when side = 'BUY' then qty else -qty end as signed_qty,
  {{ session_date('ts') }} as session_date
from src
