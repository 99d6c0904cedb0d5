{{ config(meta={'description': 'Governance (§H4): a vetoed candidate gets nothing; allocations are long-only and fit the budget.'}) }}
select as_of, candidate_id, weight, 'vetoed but allocated' as violation
from {{ ref('capital_allocations') }}
where vetoed and weight > 1e-9
union all
select as_of, candidate_id, weight, 'negative weight' from {{ ref('capital_allocations') }} where weight < -1e-9
union all
select as_of, null, sum(weight), 'weights sum above 1' from {{ ref('capital_allocations') }}
group by as_of having sum(weight) > 1 + 1e-6
