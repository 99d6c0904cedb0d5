-- Per as-of session, symbol and model: age, the three decay factors and their product (§D3, §D4).
select
  {{ key(['as_of', 'symbol', 'model']) }} as decay_key,
  as_of, symbol, model, model_version, cast(fit_date as date) as fit_date,
  age_days, age_factor, error_n, error_rmse, error_factor, autocorr_recent, autocorr_fit, flip_factor,
  decay_factor,
  age_factor = 0 as expired,
  reason_codes
from {{ ref('stg_model_decay_metrics') }}
