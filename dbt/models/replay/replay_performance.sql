{{ config(enabled=var('replay_marts', false), schema='replay', materialized='table', tags=['replay']) }}
-- One row per replayed session: the track record's curves (NAV, drawdown, exposure, regime path).
select
    session_as_of, traded_session, nav, cash, pnl_day, pnl_total, realized_pnl, unrealized_pnl,
    drawdown, daily_loss, gross_exposure, invested_weight, regime, p_crisis_5d, exposure_scale,
    derisk, reduce_only, predicted_var, predicted_cvar, cvar_limit, realized_loss_h, var_exceeded,
    turnover, trade_cost, trading_mode, kill_switch, reconciled, refit
from {{ source('replay', 'replay_sessions') }}
order by session_as_of
