-- One row per as-of session and symbol: the §B4 score, the status and, for an excluded symbol,
-- why it was excluded (the reason codes), so a reader sees exclusions without SQL.
select
  {{ key(['as_of', 'symbol']) }} as data_quality_key,
  as_of, symbol, asset_class, calendar,
  status,
  coalesce(tradable, false) as tradable,
  status <> 'VALID' as excluded,
  case when status <> 'VALID' then coalesce(nullif(reason_codes, ''), status) end as exclusion_reason,
  data_quality_score,
  expected_sessions, observed_sessions, valid_sessions, rejected_rows,
  missing_sessions, duplicate_dates, non_positive_prices, ohlc_inconsistent, return_spikes,
  volume_spikes, stale_prices, split_like_jumps,
  reason_codes
from {{ ref('stg_data_quality') }}
