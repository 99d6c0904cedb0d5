{{ config(meta={'description': 'Reconciliation (§J1): the position snapshot equals the sum of signed fills per symbol.'}) }}
select symbol, qty, fills_qty
from {{ ref('positions') }}
where abs(qty - fills_qty) > 1e-6
