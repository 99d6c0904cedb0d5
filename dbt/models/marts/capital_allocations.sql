-- Per as-of session and candidate: the auction's decision with its reason codes (§F2), next to
-- the symbol's data-quality status and the strategy's stage that session, so the governance
-- rule "nothing allocated to an excluded symbol" is one WHERE clause (tests/).
with a as (select * from {{ ref('stg_capital_allocations') }}),
dq as (select as_of, symbol, status, tradable from {{ ref('stg_data_quality') }}),
lc as (select as_of, strategy_id, stage, effective_cap from {{ ref('stg_strategy_lifecycle') }})
select
  {{ key(['a.as_of', 'a.candidate_id']) }} as allocation_key,
  a.as_of, a.candidate_id, a.strategy_id, a.symbol,
  coalesce(a.weight, 0.0) as weight,
  coalesce(a.allocated, coalesce(a.weight, 0.0) > 0) as allocated,
  a.rank, a.decision, a.reason_codes, a.eligibility,
  coalesce(a.vetoed, false) as vetoed, a.veto_reason,
  a.mu_adj, a.cost, a.mu_contribution, a.liquidity_cost, a.cvar_contribution, a.marginal_cvar,
  a.correlation, a.data_quality_penalty, a.model_decay_penalty, a.cap, a.binding_cap,
  dq.status as symbol_status,
  coalesce(dq.tradable, false) as symbol_tradable,
  lc.stage as strategy_stage,
  lc.effective_cap as strategy_effective_cap
from a
left join dq on dq.as_of = a.as_of and dq.symbol = a.symbol
left join lc on lc.as_of = a.as_of and lc.strategy_id = a.strategy_id
