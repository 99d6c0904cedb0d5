-- Per as-of session and strategy: stage, NAV caps and whether the stage changed that session (§E2).
select
  {{ key(['as_of', 'strategy_id']) }} as lifecycle_key,
  as_of, strategy_id, model, stage, previous_stage,
  coalesce(stage is distinct from previous_stage, false) as stage_changed,
  stage_since, capital_multiplier, nav_cap, effective_cap, proving, reason_codes
from {{ ref('stg_strategy_lifecycle') }}
