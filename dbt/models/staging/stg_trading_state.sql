-- Append-only trading-state history; the current state is the row with the highest id.
with src as (
  {{ tolerant_source('ledger', 'ledger_trading_state', [
      'id bigint', 'mode varchar', 'actor varchar', 'why varchar', 'reason_codes varchar',
      'latched boolean', 'ts timestamp'
  ]) }}
)
select id, mode, actor, why, {{ json_codes('reason_codes') }} as reason_codes, latched, ts,
       id = max(id) over () as is_current
from src
