{{ config(meta={'description': 'Governance (§I3, §J1): fills never exceed the order quantity, and the order agrees with its fills.'}) }}
select client_order_id, qty, filled_qty, fill_qty
from {{ ref('orders') }}
where fill_qty > qty + 1e-6 or abs(coalesce(filled_qty, 0) - fill_qty) > 1e-6
