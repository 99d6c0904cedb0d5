{{ config(meta={'description': 'Governance (§I1): every order consumed a signed approval, once, by itself, before it expired.'}) }}
select client_order_id, approval_id, approval_signed, approval_used_by, approval_used_at, approval_expires_at
from {{ ref('orders') }}
where not coalesce(approval_signed, false)
   or approval_used_at is null
   or approval_used_by is distinct from client_order_id
   or approval_used_at > approval_expires_at
