{{ config(meta={'description': 'Governance (§B4, §B5, §F2): no weight > 0 to a symbol that is not VALID in that session (or has no quality row: fail closed).'}) }}
-- Rows returned = violations.
select as_of, candidate_id, symbol, weight, symbol_status
from {{ ref('capital_allocations') }}
where weight > 1e-9 and coalesce(symbol_status, 'MISSING') <> 'VALID'
