"""Model decay (§D3, §D4): nothing is trusted indefinitely.

Three factors in [0, 1], multiplied into ``decay_factor`` (which scales forecast confidence
and the auction weight):

* **age**: 1 until ``full_until_days`` calendar days after the fit date, then linear to 0 at
  ``expire_days``. A model at or beyond ``expire_days`` is dead (``MODEL_EXPIRED``).
* **forecast error**: the standardized RMSE ``sqrt(mean(((R - mu) / sigma)^2))`` of the model's
  recent forecasts against realised H-session simple returns (the scale of ``forecasts.py``;
  ``features.forward_returns``). ~1 when errors are what the forecast
  sigma promised; 1 up to ``error_tolerance``, then linear down to ``error_floor`` at
  ``error_max``. Fewer than ``error_min_obs`` realised forecasts -> 1 (no evidence yet; age
  still applies).
* **autocorrelation flip**: ``flip_factor`` when the recent lag-1 autocorrelation of daily
  returns is significant (|rho| > z / sqrt(n)) and of the opposite sign to a fit-window
  autocorrelation that was itself significant; 1 otherwise (noise does not flip a model).
  It applies to every model of the symbol: the dynamics they were all fitted on have changed.

Past forecasts for the error factor are either stored forecasts (any version of the model) or,
by default in ``forecasts.forecast``, out-of-sample backcasts of the current version (dates on
or after its fit date), so a freshly refitted model has no error history for ~H+20 sessions
and is judged by age alone until then.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd

from ais_pipelines.core.features import (
    SortedBars,
    build_panel,
    forward_returns,
    lag1_autocorr_rows,
    normalize_as_of,
    sorted_bars,
    symbols_of,
)
from ais_pipelines.core.reason_codes import ReasonCode, codes_str

DECAY_COLUMNS = [
    "symbol",
    "model",
    "model_version",
    "date",
    "fit_date",
    "age_days",
    "age_factor",
    "error_n",
    "error_rmse",
    "error_factor",
    "autocorr_recent",
    "autocorr_recent_n",
    "autocorr_fit",
    "autocorr_fit_n",
    "flip_factor",
    "decay_factor",
    "reason_codes",
]


@dataclass(frozen=True)
class DecayParams:
    full_until_days: int = 30  # a monthly refit keeps models at full weight
    expire_days: int = 120  # a model four months old is dead: confidence and weight 0
    error_window: int = 63  # most recent realised forecasts per (symbol, model)
    error_min_obs: int = 20
    # Standardized RMSE over 63 overlapping 5-session outcomes has a 95th percentile of ~1.3
    # for a perfectly calibrated Gaussian forecast (simulated), so 1.3 is "consistent with sigma".
    error_tolerance: float = 1.3
    error_max: float = 2.5  # RMSE at which the factor reaches the floor
    error_floor: float = 0.25
    autocorr_window: int = 63  # recent daily returns
    autocorr_fit_window: int = 252  # daily returns up to the fit date
    autocorr_min_obs: int = 20
    autocorr_z: float = 2.0  # significance threshold |rho| > z / sqrt(n)
    flip_factor: float = 0.5


class ModelLike(Protocol):
    """What decay needs to know about a fitted model (``forecasts.FittedModel`` satisfies it)."""

    name: str
    version: str
    fit_date: pd.Timestamp
    fit_autocorr: Mapping[str, Sequence[float]]  # symbol -> (rho, n) over the fit window


# --------------------------------------------------------------------------------------------
# Factors
# --------------------------------------------------------------------------------------------


def age_factor(age_days: float | np.ndarray, params: DecayParams = DecayParams()) -> float | np.ndarray:
    """1 for ``age <= full_until_days``, linear to 0 at ``expire_days``, 0 beyond."""
    age = np.asarray(age_days, dtype="float64")
    span = float(params.expire_days - params.full_until_days)
    f = np.clip((params.expire_days - age) / span, 0.0, 1.0) if span > 0 else (age < params.expire_days) * 1.0
    f = np.where(age <= params.full_until_days, 1.0, f)
    return float(f) if f.ndim == 0 else f


def standardized_rmse(
    mu: np.ndarray | pd.Series, sigma: np.ndarray | pd.Series, realized: np.ndarray | pd.Series
) -> tuple[float, int]:
    """``sqrt(mean(((realized - mu) / sigma)^2))`` over the finite triples, and their count."""
    m = np.asarray(mu, dtype="float64")
    s = np.asarray(sigma, dtype="float64")
    r = np.asarray(realized, dtype="float64")
    ok = np.isfinite(m) & np.isfinite(s) & np.isfinite(r) & (s > 0)
    n = int(ok.sum())
    if n == 0:
        return float("nan"), 0
    z = (r[ok] - m[ok]) / s[ok]
    return float(np.sqrt(np.mean(z * z))), n


def error_factor_from_rmse(
    rmse: float | np.ndarray, n: int | np.ndarray, params: DecayParams = DecayParams()
) -> float | np.ndarray:
    p = params
    e = np.asarray(rmse, dtype="float64")
    slope = (1.0 - p.error_floor) / max(p.error_max - p.error_tolerance, 1e-12)
    with np.errstate(invalid="ignore"):
        f = np.clip(1.0 - slope * (e - p.error_tolerance), p.error_floor, 1.0)
    enough = (np.asarray(n) >= p.error_min_obs) & np.isfinite(e)
    f = np.where(enough, f, 1.0)
    return float(f) if f.ndim == 0 else f


def error_factor(
    past_forecasts: pd.DataFrame, realized: pd.Series, params: DecayParams = DecayParams()
) -> float:
    """Error factor of one model on one symbol.

    ``past_forecasts`` has ``mu`` and ``sigma`` indexed by forecast date; ``realized`` holds the
    realised H-session returns indexed the same way (NaN / absent = not yet realised). The
    last ``error_window`` dates with an outcome are scored.
    """
    joined = past_forecasts[["mu", "sigma"]].join(realized.rename("realized"), how="inner")
    joined = joined.dropna().sort_index().tail(params.error_window)
    rmse, n = standardized_rmse(joined["mu"], joined["sigma"], joined["realized"])
    return float(error_factor_from_rmse(rmse, n, params))


def autocorr_sign(rho: float | np.ndarray, n: int | np.ndarray, z: float = 2.0) -> np.ndarray | int:
    """+1 / -1 when ``|rho| > z / sqrt(n)`` (significant), else 0."""
    r = np.asarray(rho, dtype="float64")
    nn = np.asarray(n, dtype="float64")
    with np.errstate(invalid="ignore", divide="ignore"):
        sig = np.isfinite(r) & (nn > 0) & (np.abs(r) > z / np.sqrt(np.where(nn > 0, nn, 1.0)))
    s = np.where(sig, np.sign(np.where(np.isfinite(r), r, 0.0)), 0.0).astype(int)
    return int(s) if s.ndim == 0 else s


def _flip_factor_arrays(
    rho_recent: np.ndarray, n_recent: np.ndarray, fit_sign: np.ndarray, params: DecayParams
) -> np.ndarray:
    recent_sign = autocorr_sign(rho_recent, n_recent, params.autocorr_z)
    enough = np.asarray(n_recent) >= params.autocorr_min_obs
    flipped = enough & (np.asarray(fit_sign) != 0) & (recent_sign == -np.asarray(fit_sign))
    return np.where(flipped, params.flip_factor, 1.0)


def lag1_autocorr(x: np.ndarray | pd.Series) -> tuple[float, int]:
    """Lag-1 sample autocorrelation (statsmodels ``acf`` estimator) of the finite values."""
    arr = np.asarray(x, dtype="float64")
    arr = arr[np.isfinite(arr)]
    rho, n = lag1_autocorr_rows(arr[None, :])
    return float(rho[0]), int(n[0])


def autocorr_flip_factor(
    returns: np.ndarray | pd.Series, fit_window_sign: int, params: DecayParams = DecayParams()
) -> float:
    """Flip factor from recent daily returns (the last ``autocorr_window`` are used) and the
    sign (+1 / -1, or 0 if not significant) of the lag-1 autocorrelation in the fit window."""
    arr = np.asarray(returns, dtype="float64")
    arr = arr[np.isfinite(arr)][-params.autocorr_window :]
    rho, n = lag1_autocorr(arr)
    return float(_flip_factor_arrays(np.array([rho]), np.array([n]), np.array([fit_window_sign]), params)[0])


def recent_autocorr(bars: pd.DataFrame, as_of: object, window: int, *,
                    sorted_: SortedBars | None = None) -> pd.DataFrame:
    """Lag-1 autocorrelation of each symbol's last ``window`` daily log returns up to ``as_of``.
    Columns: symbol, rho, n."""
    panel = build_panel(bars, as_of, window + 1, sorted_=sorted_)
    rho, n = lag1_autocorr_rows(panel.returns[:, 1:])
    return pd.DataFrame({"symbol": panel.symbols.astype(str), "rho": rho, "n": n.astype(np.int64)})


# --------------------------------------------------------------------------------------------
# Table (§D4)
# --------------------------------------------------------------------------------------------


def _error_table(
    bars: pd.DataFrame, as_of: pd.Timestamp, horizon: int, past_forecasts: pd.DataFrame, params: DecayParams
) -> pd.DataFrame:
    """Standardized RMSE per (symbol, model) over the last ``error_window`` realised forecasts."""
    pf = past_forecasts.loc[
        pd.to_datetime(past_forecasts["date"]) <= as_of, ["symbol", "model", "date", "mu", "sigma"]
    ]
    if pf.empty:
        return pd.DataFrame(columns=["symbol", "model", "error_rmse", "error_n"])
    pf = pf.assign(symbol=pf["symbol"].astype(str), date=pd.to_datetime(pf["date"]).astype("datetime64[ns]"))
    # Only the forecasts' dates are joined: the bars before the first one cannot change a return
    # from it onwards (P[t+H] / P[t] over the symbol's own later sessions), so they are not sorted.
    first = pf["date"].min()
    recent = bars.loc[(pd.to_datetime(bars["date"]) >= first).to_numpy()]
    realized = forward_returns(recent, as_of, horizon)
    realized = realized.assign(symbol=realized["symbol"].astype(str))
    j = pf.merge(realized, on=["symbol", "date"], how="inner")
    j = j[np.isfinite(j["fwd_ret"]) & np.isfinite(j["mu"]) & (j["sigma"] > 0)]
    if j.empty:
        return pd.DataFrame(columns=["symbol", "model", "error_rmse", "error_n"])
    j = j.sort_values(["symbol", "model", "date"], kind="mergesort")
    j = j.groupby(["symbol", "model"], sort=False).tail(params.error_window)
    j = j.assign(z2=((j["fwd_ret"] - j["mu"]) / j["sigma"]) ** 2)
    agg = j.groupby(["symbol", "model"], sort=True)["z2"].agg(["mean", "count"]).reset_index()
    return pd.DataFrame(
        {
            "symbol": agg["symbol"].astype(str),
            "model": agg["model"].astype(str),
            "error_rmse": np.sqrt(agg["mean"].to_numpy(dtype="float64")),
            "error_n": agg["count"].to_numpy(dtype="int64"),
        }
    )


def decay_metrics(
    bars: pd.DataFrame,
    as_of: object,
    models: Sequence[ModelLike],
    params: DecayParams = DecayParams(),
    *,
    horizon: int,
    past_forecasts: pd.DataFrame | None = None,
    symbols: Sequence[str] | None = None,
    sorted_: SortedBars | None = None,
) -> pd.DataFrame:
    """Decay metrics per (symbol, model) as of ``as_of`` (columns ``DECAY_COLUMNS``).
    ``sorted_``: ``sorted_bars(bars, as_of)`` if the caller has it.

    ``past_forecasts`` (symbol, model, date, mu, sigma) are earlier forecasts of the models on
    horizon ``horizon``; only those dated on/before ``as_of`` whose H-session outcome is known by
    ``as_of`` are scored. Without them the error factor is 1 (``error_n`` 0).
    Raises ``ValueError`` for a model fitted after ``as_of`` (it cannot exist yet).
    """
    as_of_ts = normalize_as_of(as_of)
    lg = sorted_
    if symbols is None:  # one sort for the symbols and the autocorrelation panel
        lg = sorted_bars(bars, as_of_ts) if lg is None else lg
        symbols = symbols_of(bars, as_of_ts, sorted_=lg)
    syms = [str(s) for s in symbols]
    if not syms or not models:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in DECAY_COLUMNS})
    for m in models:
        if pd.Timestamp(m.fit_date) > as_of_ts:
            raise ValueError(f"model {m.version} was fitted after {as_of_ts.date()}: not point in time")

    ac = recent_autocorr(bars, as_of_ts, params.autocorr_window, sorted_=lg).set_index("symbol")
    ac = ac.reindex(syms)
    rho_recent = ac["rho"].to_numpy(dtype="float64")
    n_recent = ac["n"].fillna(0).to_numpy(dtype="int64")

    errors = (
        _error_table(bars, as_of_ts, horizon, past_forecasts, params)
        if past_forecasts is not None
        else pd.DataFrame(columns=["symbol", "model", "error_rmse", "error_n"])
    )
    err_idx = errors.set_index(["symbol", "model"]) if len(errors) else None

    frames = []
    for m in models:
        fit_date = pd.Timestamp(m.fit_date).normalize()
        age = int((as_of_ts - fit_date).days)
        af = float(age_factor(age, params))
        fit = [m.fit_autocorr.get(s, (np.nan, 0)) for s in syms]
        rho_fit = np.array([f[0] if f[0] is not None else np.nan for f in fit], dtype="float64")
        n_fit = np.array([f[1] for f in fit], dtype="int64")
        fit_sign = autocorr_sign(rho_fit, n_fit, params.autocorr_z)
        flip = _flip_factor_arrays(rho_recent, n_recent, np.asarray(fit_sign), params)
        if err_idx is not None:
            e = err_idx.reindex(pd.MultiIndex.from_arrays([syms, [m.name] * len(syms)]))
            rmse = e["error_rmse"].to_numpy(dtype="float64")
            n_err = e["error_n"].fillna(0).to_numpy(dtype="int64")
        else:
            rmse = np.full(len(syms), np.nan)
            n_err = np.zeros(len(syms), dtype="int64")
        ef = np.asarray(error_factor_from_rmse(rmse, n_err, params), dtype="float64")
        decay = af * ef * flip
        reasons = []
        for i in range(len(syms)):
            codes: list[ReasonCode] = []
            if af <= 0.0:
                codes.append(ReasonCode.MODEL_EXPIRED)
            elif af < 1.0:
                codes.append(ReasonCode.MODEL_AGE_DECAY)
            if ef[i] < 1.0:
                codes.append(ReasonCode.MODEL_ERROR_DECAY)
            if flip[i] < 1.0:
                codes.append(ReasonCode.MODEL_AUTOCORR_FLIP)
            reasons.append(codes_str(codes))
        frames.append(
            pd.DataFrame(
                {
                    "symbol": syms,
                    "model": m.name,
                    "model_version": m.version,
                    "date": as_of_ts,
                    "fit_date": fit_date,
                    "age_days": age,
                    "age_factor": af,
                    "error_n": n_err,
                    "error_rmse": rmse,
                    "error_factor": ef,
                    "autocorr_recent": rho_recent,
                    "autocorr_recent_n": n_recent,
                    "autocorr_fit": rho_fit,
                    "autocorr_fit_n": n_fit,
                    "flip_factor": flip,
                    "decay_factor": decay,
                    "reason_codes": reasons,
                }
            )
        )
    out = pd.concat(frames, ignore_index=True)
    for c in ("symbol", "model", "model_version", "reason_codes"):
        out[c] = out[c].astype("string")
    return out[DECAY_COLUMNS]
