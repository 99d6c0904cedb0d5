-- Issued approvals (the signature itself stays in the ledger; only whether there is one).
with src as (
  {{ tolerant_source('ledger', 'ledger_approvals', [
      'approval_id varchar', 'signature varchar', 'expires_at timestamp', 'created_at timestamp',
      'used_at timestamp', 'used_by varchar'
  ]) }}
)
select approval_id, coalesce(length(signature), 0) > 0 as signed, expires_at, created_at, used_at, used_by
from src
