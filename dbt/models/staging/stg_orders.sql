with src as (
  {{ tolerant_source('ledger', 'ledger_orders', [
      'client_order_id varchar', 'idempotency_key varchar', 'approval_id varchar', 'payload_hash varchar',
      'payload varchar', 'symbol varchar', 'side varchar', 'qty double', 'order_type varchar',
      'limit_price double', 'notional double', 'reduce_only boolean', 'mode varchar', 'state varchar',
      'broker_order_id varchar', 'filled_qty double', 'avg_fill_price double', 'reason_codes varchar',
      'created_at timestamp', 'updated_at timestamp', 'submitted_at timestamp'
  ]) }}
)
select
  client_order_id, idempotency_key, approval_id, payload_hash, symbol, side, qty, order_type,
  limit_price, notional, reduce_only, mode, state, broker_order_id, filled_qty, avg_fill_price,
  {{ json_codes('reason_codes') }} as reason_codes,
  try_cast(json_extract_string(payload, '$.as_of') as date) as payload_as_of,
  coalesce(
    try_cast(json_extract_string(payload, '$.expected_price') as double),
    try_cast(json_extract_string(payload, '$.reference_price') as double),
    try_cast(json_extract_string(payload, '$.arrival_price') as double)
  ) as expected_price,
  payload,
  created_at, updated_at, submitted_at,
  {{ session_date('created_at') }} as session_date
from src
