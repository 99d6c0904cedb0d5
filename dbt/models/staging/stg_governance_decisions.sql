-- Pre-trade policy decisions incl. governance vetoes (§H3, §H4), one row per order proposal
-- (ais_pipelines.execution.DECISION_COLUMNS + as_of). Zero rows until the execution assets write
-- governance_decisions; columns it lacks are NULL (the mart falls back sensibly).
with src as (
  {{ tolerant_source('warehouse', 'governance_decisions', [
      'as_of date', 'decision_id varchar', 'order_id varchar', 'candidate_id varchar', 'symbol varchar',
      'side varchar', 'stage varchar', 'decision varchar', 'reason_codes varchar',
      'requested_qty double', 'approved_qty double', 'n_hits bigint', 'undetermined boolean',
      'vetoed boolean', 'veto_reason varchar', 'environment varchar', 'policy_digest varchar',
      'actor varchar', 'decided_at timestamp', 'evaluated_at timestamp', 'expires_at timestamp'
  ]) }}
),
normalised as (
  select * exclude (reason_codes), {{ json_codes('reason_codes') }} as reason_codes from src
)
select
  * exclude (vetoed, veto_reason, decided_at),
  -- a governance veto (§H4) is a REJECT carrying a VETO_* reason code
  coalesce(vetoed, false) or coalesce(reason_codes like '%VETO_%', false) as vetoed,
  coalesce(veto_reason, nullif(array_to_string(list_filter(string_split(coalesce(reason_codes, ''), ';'),
                                                           lambda x: x like 'VETO_%'), ';'), '')) as veto_reason,
  coalesce(decided_at, evaluated_at) as decided_at
from normalised
