with src as (
  {{ tolerant_source('ledger', 'ledger_review_queue', [
      'item_id varchar', 'order_payload varchar', 'reasons varchar', 'status varchar',
      'created_at timestamp', 'decided_by varchar', 'decided_at timestamp', 'why varchar'
  ]) }}
)
select
  item_id, status, {{ json_codes('reasons') }} as reason_codes,
  json_extract_string(order_payload, '$.symbol') as symbol,
  json_extract_string(order_payload, '$.side') as side,
  try_cast(json_extract_string(order_payload, '$.qty') as double) as qty,
  created_at, decided_by, decided_at, why
from src
