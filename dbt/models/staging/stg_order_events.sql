with src as (
  {{ tolerant_source('ledger', 'ledger_order_events', [
      'id bigint', 'client_order_id varchar', 'event varchar', 'from_state varchar', 'to_state varchar',
      'reason_codes varchar', 'detail varchar', 'ts timestamp'
  ]) }}
)
select id, client_order_id, event, from_state, to_state, {{ json_codes('reason_codes') }} as reason_codes,
       detail, ts
from src
