{{ config(meta={'description': 'Governance (§I1, §I2): every fill belongs to an order of the same symbol and side.'}) }}
select fill_id, client_order_id, symbol, side, order_symbol, order_side
from {{ ref('fills') }}
where not has_order or order_symbol <> symbol or order_side <> side
