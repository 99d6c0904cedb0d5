-- One row per dated data-quality event (issue 13): which session of which symbol was missing,
-- spiked, stale, split, rejected … as assessed on each as-of session, with the symbol's status
-- that night, so a risk officer can see when a symbol's problems happened, not only how many.
with f as (
  select *, row_number() over (partition by as_of, symbol, session, flag order by detail, value) as event_seq
  from {{ ref('stg_quality_flags') }}
),
dq as (select as_of, symbol, status from {{ ref('stg_data_quality') }})
select
  {{ key(['f.as_of', 'f.symbol', 'f.session', 'f.flag', 'f.event_seq']) }} as quality_flag_key,
  f.as_of, f.symbol, f.session, extract(year from f.session)::integer as session_year,
  f.flag, f.reason_code, f.value, f.detail, f.event_seq,
  dq.status as symbol_status
from f left join dq on dq.as_of = f.as_of and dq.symbol = f.symbol
