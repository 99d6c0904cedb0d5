"""Forecasts as distributions (§D1, §D2): several fitted models per symbol, combined.

Horizon and units
-----------------
Everything is on the horizon H (default 5 of the symbol's own sessions) and on the **simple**
return scale, because the capital auction compares ``mu_adj`` with the CVaR of H-session simple
scenario returns (§F1a, ``scenarios.py``). ``sigma`` is the daily EWMA volatility x sqrt(H)
(optionally blended with the 1-year volatility). The return distribution is a location-scale
**Student-t** with ``t_dof`` = 5 degrees of freedom scaled to standard deviation ``sigma``:
``R = mu + sigma * sqrt((nu - 2) / nu) * T_nu``. From it: ``p_loss = P(R < 0)``,
``var_95 = -q_5%(R)``, ``cvar_95 = E[-R | -R >= var_95]`` (a positive loss fraction) and the
90 % interval ``[q_5%, q_95%]``. (``tail="normal"`` gives the Gaussian versions.)

Models (each fitted on history up to a fit date, pooled over all symbols)
-----------------------------------------------------------------------
Targets are vol-standardized forward returns ``y_t = (P[t+H] / P[t] - 1) / (sigma_t sqrt(H))``
with ``sigma_t`` the EWMA daily volatility known at t, so one coefficient serves a utility and a
crypto coin alike, and only targets realised by the fit date are used (point in time).

* ``momentum``: ``x = log(P[t-21] / P[t-252]) / (sigma_t sqrt(231))`` (12-1 momentum in
  volatility units), clipped to +-3.
* ``mean_reversion``: ``x = -log(P[t] / P[t-5]) / (sigma_t sqrt(5))`` (minus the last week's
  move in volatility units), clipped to +-3.
  Both: pooled regression through the origin ``y = b x + e``. The standard error is clustered
  by blocks of H consecutive dates (overlapping targets and cross-sectional correlation), and
  ``b`` is shrunk toward zero by the normal-prior posterior mean
  ``b = b_ols * tau^2 / (tau^2 + se^2)`` (``coef_prior_sd`` tau = 0.1).
* ``regime_mean``: mean of y per regime label (the labels are an input: a date-indexed series,
  e.g. the filtered NORMAL / VOLATILE / CRISIS of ``regime.py``), shrunk toward 0 in the same
  way, then per symbol shrunk toward the pooled regime mean (prior sd ``symbol_prior_sd``).
  Forecast: ``sum_r p_r m_{symbol, r}`` with ``p`` the current regime beliefs (or, without
  them, the regime frequencies of the fit window). A regime unseen in the fit has mean 0.

Forecast: ``mu = (model value in sigma units) * sigma_t * sqrt(H)``.

Combination (§D2)
-----------------
``mu = mean_k mu_k``; the disagreement is the population variance of the models' means in
units of the horizon volatility, ``d2 = Var_k(mu_k / sigma_H)`` (scale-free: the same for a
utility and a coin), and ``mu_adj = mu * exp(-beta * d2)`` with ``beta = 100``.
Fitted 5-session models forecast a few hundredths of sigma_H (0.02-0.05 on the sample data; 0.1
sigma_H a week is an annualised Sharpe of ~0.7), so the cross-model standard deviation d is of
that size too:

=================  =====  =====  =====  =====  =====
d (sigma_H units)   0.02   0.05   0.10   0.15   0.20
exp(-100 d^2)       0.96   0.78   0.37   0.11   0.02
=================  =====  =====  =====  =====  =====

Models disagreeing by about as much as a good signal is large (0.05-0.1 sigma_H) keep 37-78 %
of mu; the factor is positive, so the sign of mu never flips. ``MODEL_DISAGREEMENT`` is
recorded when the factor is below 0.9 (d > 0.032 sigma_H).

``confidence = decay_factor * agreement * strength`` in [0, 1]: ``agreement = exp(-beta d2)``
(the same factor), ``strength = min(1, |mu_adj| / sigma_H / strength_full)`` with
``strength_full = 0.05`` (5 % of a horizon sigma, an annualised Sharpe of ~0.35 for the one
forecast, is full strength) and ``decay_factor`` the mean of the models' §D3 decay factors.
Models at ``expire_days`` have decay 0, hence confidence 0. Weak forecasts therefore score low
and go to REVIEW under the pre-trade rule (confidence < 0.6): that is intended.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ais_pipelines.core.decay import DecayParams, decay_metrics
from ais_pipelines.core.features import (
    FeatureParams,
    Panel,
    SortedBars,
    build_panel,
    compute_market_features,
    ewma_variance,
    lag,
    lag1_autocorr_rows,
    normalize_as_of,
    rolling_window,
    sorted_bars,
)
from ais_pipelines.core.reason_codes import ReasonCode, codes_str

MODEL_NAMES: tuple[str, ...] = ("momentum", "mean_reversion", "regime_mean")
ALL_REGIMES_LABEL = "ALL"

PER_MODEL_COLUMNS = [
    "symbol",
    "as_of",
    "model",
    "model_version",
    "fit_date",
    "model_age_days",
    "horizon",
    "signal",
    "mu",
    "sigma",
    "p_loss",
    "var_95",
    "cvar_95",
    "ci_low",
    "ci_high",
    "age_factor",
    "error_rmse",
    "error_n",
    "error_factor",
    "autocorr_recent",
    "autocorr_fit",
    "flip_factor",
    "decay_factor",
    "features_ok",
    "reason_codes",
]

COMBINED_COLUMNS = [
    "symbol",
    "as_of",
    "horizon",
    "n_models",
    "mu",
    "disagreement_var",
    "disagreement_factor",
    "mu_adj",
    "sigma",
    "p_loss",
    "var_95",
    "cvar_95",
    "ci_low",
    "ci_high",
    "agreement",
    "strength",
    "decay_factor",
    "confidence",
    "model_version",
    "model_age_days",
    "features_ok",
    "reason_codes",
]


@dataclass(frozen=True)
class ForecastParams:
    horizon: int = 5  # sessions; the auction's scenario horizon (§F1a)
    models: tuple[str, ...] = MODEL_NAMES
    fit_lookback: int = 756  # signal dates per symbol used in a fit (~3 years)
    mom_long: int = 252
    mom_skip: int = 21
    mr_lookback: int = 5
    signal_clip: float = 3.0
    coef_prior_sd: float = 0.1  # prior sd of a slope in sigma units per signal unit
    regime_prior_sd: float = 0.1  # prior sd of a pooled regime mean (sigma_H units)
    symbol_prior_sd: float = 0.05  # prior sd of a symbol's deviation from the pooled mean
    ewma_lambda: float = 0.94
    ewma_min_obs: int = 21
    sigma_ewma_weight: float = 1.0  # 1 = pure EWMA; < 1 blends in the 1-year variance
    long_vol_window: int = 252
    tail: str = "student_t"  # or "normal"
    t_dof: float = 5.0
    cvar_alpha: float = 0.95
    ci_level: float = 0.90
    disagreement_beta: float = 100.0  # on Var(mu_k / sigma_H); see the module table
    disagreement_flag_below: float = 0.9  # MODEL_DISAGREEMENT when exp(-beta d2) is below this
    strength_full: float = 0.05  # |mu_adj| / sigma_H at which strength is 1
    features: FeatureParams = field(default_factory=FeatureParams)
    decay: DecayParams = field(default_factory=DecayParams)

    def spec(self) -> dict[str, Any]:
        """The signal definition a fitted model carries (forecasting must reuse it)."""
        return {
            "mom_long": self.mom_long,
            "mom_skip": self.mom_skip,
            "mr_lookback": self.mr_lookback,
            "signal_clip": self.signal_clip,
            "ewma_lambda": self.ewma_lambda,
            "ewma_min_obs": self.ewma_min_obs,
        }


# --------------------------------------------------------------------------------------------
# Fitted model (JSON round-trippable)
# --------------------------------------------------------------------------------------------


def _jsonable(x: Any) -> Any:
    """Plain JSON types; NaN/inf become None so the JSON is strict."""
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, bool | np.bool_):
        return bool(x)
    if isinstance(x, int | np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        v = float(x)
        return v if math.isfinite(v) else None
    return x


def _version(name: str, fit_date: pd.Timestamp, horizon: int, spec: Mapping, coefficients: Mapping) -> str:
    payload = json.dumps(
        _jsonable(
            {
                "name": name,
                "fit_date": f"{fit_date:%Y-%m-%d}",
                "horizon": horizon,
                "spec": spec,
                "coefficients": coefficients,
            }
        ),
        sort_keys=True,
        separators=(",", ":"),
    )
    digest = hashlib.sha256(payload.encode()).hexdigest()[:10]
    return f"{name}@{fit_date:%Y-%m-%d}#{digest}"


@dataclass(frozen=True, eq=False)
class FittedModel:
    """A model fitted on history up to ``fit_date``. ``version`` = name@fit_date#hash, the hash
    over the signal spec and the fitted coefficients (same fit -> same version)."""

    name: str
    fit_date: pd.Timestamp
    horizon: int
    spec: dict[str, Any]
    coefficients: dict[str, Any]
    diagnostics: dict[str, Any] = field(default_factory=dict)
    fit_autocorr: dict[str, tuple[float, int]] = field(default_factory=dict)  # symbol -> (rho, n)
    version: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "fit_date", normalize_as_of(self.fit_date))
        expected = _version(self.name, self.fit_date, self.horizon, self.spec, self.coefficients)
        if not self.version:
            object.__setattr__(self, "version", expected)
        elif self.version != expected:
            raise ValueError(f"model version {self.version} does not match its parameters ({expected})")

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(
            {
                "name": self.name,
                "fit_date": f"{self.fit_date:%Y-%m-%d}",
                "horizon": self.horizon,
                "spec": self.spec,
                "coefficients": self.coefficients,
                "diagnostics": self.diagnostics,
                "fit_autocorr": {s: [rho, n] for s, (rho, n) in self.fit_autocorr.items()},
                "version": self.version,
            }
        )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FittedModel:
        """Inverse of ``to_dict``; raises ``ValueError`` if the stored version does not match
        the stored parameters (a tampered or corrupted record)."""
        fit_ac = {
            str(s): (float("nan") if v[0] is None else float(v[0]), int(v[1]))
            for s, v in dict(d.get("fit_autocorr", {})).items()
        }
        return cls(
            name=str(d["name"]),
            fit_date=pd.Timestamp(d["fit_date"]),
            horizon=int(d["horizon"]),
            spec=dict(d["spec"]),
            coefficients=dict(d["coefficients"]),
            diagnostics=dict(d.get("diagnostics", {})),
            fit_autocorr=fit_ac,
            version=str(d["version"]),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> FittedModel:
        return cls.from_dict(json.loads(text))


def select_models(models: Sequence[FittedModel], as_of: object) -> list[FittedModel]:
    """The latest version of each model with ``fit_date <= as_of`` (what the nightly job uses)."""
    as_of_ts = normalize_as_of(as_of)
    best: dict[str, FittedModel] = {}
    for m in models:
        if m.fit_date <= as_of_ts and (m.name not in best or m.fit_date > best[m.name].fit_date):
            best[m.name] = m
    return [best[n] for n in sorted(best)]


# --------------------------------------------------------------------------------------------
# Signals on a panel
# --------------------------------------------------------------------------------------------


def _lead(a: np.ndarray, k: int) -> np.ndarray:
    """``out[:, j] = a[:, j + k]`` (NaN past the end)."""
    out = np.full_like(a, np.nan, dtype="float64")
    if k < a.shape[1]:
        out[:, : a.shape[1] - k] = a[:, k:]
    return out


@dataclass(frozen=True)
class _Signals:
    logp: np.ndarray
    sigma: np.ndarray  # daily EWMA vol known at t (the models' normalizer)
    x: dict[str, np.ndarray]  # model name -> clipped signal (sigma units)


def _signals(panel: Panel, spec: Mapping[str, Any]) -> _Signals:
    logp = panel.logp
    r = logp - lag(logp, 1)
    sigma = np.sqrt(ewma_variance(r, float(spec["ewma_lambda"]), int(spec["ewma_min_obs"])))
    clip = float(spec["signal_clip"])
    long_, skip, k = int(spec["mom_long"]), int(spec["mom_skip"]), int(spec["mr_lookback"])
    with np.errstate(invalid="ignore", divide="ignore"):
        mom = (lag(logp, skip) - lag(logp, long_)) / (sigma * np.sqrt(long_ - skip))
        mr = -(logp - lag(logp, k)) / (sigma * np.sqrt(k))
    return _Signals(
        logp=logp,
        sigma=sigma,
        x={"momentum": np.clip(mom, -clip, clip), "mean_reversion": np.clip(mr, -clip, clip)},
    )


def _forward_target(logp: np.ndarray, sigma: np.ndarray, horizon: int) -> np.ndarray:
    """Vol-standardized forward simple return; NaN where t+H is beyond the panel (the fit date)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.expm1(_lead(logp, horizon) - logp) / (sigma * np.sqrt(horizon))


def _date_blocks(dates: np.ndarray, horizon: int) -> np.ndarray:
    """Cluster id per sample: blocks of H consecutive distinct dates."""
    _, inv = np.unique(dates, return_inverse=True)
    return inv // max(horizon, 1)


def _clustered_se_mean(resid: np.ndarray, blocks: np.ndarray, denom: float) -> float:
    sums = np.bincount(blocks, weights=resid)
    return float(np.sqrt(np.sum(sums * sums)) / denom) if denom > 0 else float("inf")


def _shrink(estimate: float, se: float, prior_sd: float) -> float:
    """Posterior mean under a N(0, prior_sd^2) prior and a N(estimate, se^2) likelihood."""
    if not math.isfinite(estimate) or not math.isfinite(se):
        return 0.0
    return estimate * prior_sd**2 / (prior_sd**2 + se**2)


def _fit_linear(
    x: np.ndarray, y: np.ndarray, dates: np.ndarray, horizon: int, prior_sd: float
) -> tuple[dict, dict]:
    ok = np.isfinite(x) & np.isfinite(y)
    xs, ys = x[ok], y[ok]
    n = int(ok.sum())
    # Correctly rounded sums, not BLAS dot: a multithreaded dot splits the sum by thread, so the
    # coefficient (and every decision after it) would depend on the machine's core count.
    sxx = math.fsum(xs * xs)
    if n < 10 or sxx <= 0:
        return {"beta": 0.0}, {"n_obs": n, "beta_ols": None, "se": None, "shrink": 0.0}
    b_ols = math.fsum(xs * ys) / sxx
    se = _clustered_se_mean(xs * (ys - b_ols * xs), _date_blocks(dates[ok], horizon), sxx)
    b = _shrink(b_ols, se, prior_sd)
    return {"beta": b}, {
        "n_obs": n,
        "beta_ols": b_ols,
        "se": se,
        "t_stat": b_ols / se if se > 0 else None,
        "shrink": b / b_ols if b_ols != 0 else 1.0,
    }


def _label_index(
    dates: np.ndarray, regime_labels: pd.Series | None, regimes: Sequence[str], up_to: pd.Timestamp
) -> np.ndarray:
    """Regime id (index into ``regimes``) in force on each date, -1 if unknown. A date takes the
    last label dated on/before it (crypto weekends inherit Friday's), never a later one."""
    out = np.full(dates.shape, -1, dtype=np.int64)
    if regime_labels is None:
        return np.where(~np.isnat(dates), 0, -1)
    lab = regime_labels.dropna()
    lab.index = pd.DatetimeIndex(pd.to_datetime(lab.index)).as_unit("ns")
    lab = lab[lab.index <= up_to].sort_index()
    if lab.empty:
        return out
    ids = {r: i for i, r in enumerate(regimes)}
    lab_ids = np.array([ids.get(str(v), -1) for v in lab.to_numpy()], dtype=np.int64)
    pos = np.searchsorted(lab.index.to_numpy(), dates.ravel(), side="right") - 1
    flat = np.where((pos >= 0) & ~np.isnat(dates.ravel()), lab_ids[np.clip(pos, 0, None)], -1)
    return flat.reshape(dates.shape)


def _fit_regime(
    y: np.ndarray,
    dates: np.ndarray,
    symbols: np.ndarray,
    labels: np.ndarray,
    regimes: Sequence[str],
    params: ForecastParams,
) -> tuple[dict, dict]:
    H = params.horizon
    ok = np.isfinite(y) & (labels >= 0)
    rows = np.nonzero(ok)[0]
    ys, ls, ds = y[ok], labels[ok], dates[ok]
    n = len(ys)
    regime_mean: dict[str, float] = {}
    regime_freq: dict[str, float] = {}
    diag: dict[str, Any] = {"n_obs": n, "regimes": {}}
    symbol_mean: dict[str, dict[str, float]] = {}
    if n == 0:
        return {
            "regimes": list(regimes),
            "regime_mean": {r: 0.0 for r in regimes},
            "regime_freq": {r: 1.0 / len(regimes) for r in regimes},
            "symbol_mean": {},
        }, diag
    s2 = float(np.var(ys)) if n > 1 else 1.0
    blocks = _date_blocks(ds, H)
    for k, r in enumerate(regimes):
        m = ls == k
        nk = int(m.sum())
        regime_freq[r] = nk / n
        if nk == 0:
            regime_mean[r] = 0.0
            diag["regimes"][r] = {"n_obs": 0}
            continue
        ybar = float(ys[m].mean())
        se = _clustered_se_mean(np.where(m, ys - ybar, 0.0), blocks, float(nk))
        regime_mean[r] = _shrink(ybar, se, params.regime_prior_sd)
        diag["regimes"][r] = {"n_obs": nk, "mean_raw": ybar, "se": se}
    # per-symbol deviations: overlap-corrected se = sqrt(s2 * H / n)
    df = pd.DataFrame({"sym": rows, "reg": ls, "y": ys})
    g = df.groupby(["sym", "reg"], sort=True)["y"].agg(["mean", "count"])
    tau2 = params.symbol_prior_sd**2
    for (sym_row, reg), (mean, cnt) in zip(g.index, g.to_numpy(), strict=True):
        base = regime_mean[regimes[reg]]
        se2 = s2 * H / cnt
        val = base + (mean - base) * tau2 / (tau2 + se2)
        symbol_mean.setdefault(str(symbols[sym_row]), {})[regimes[reg]] = float(val)
    return {
        "regimes": list(regimes),
        "regime_mean": regime_mean,
        "regime_freq": regime_freq,
        "symbol_mean": symbol_mean,
    }, diag


def fit_models(
    bars: pd.DataFrame,
    fit_date: object,
    params: ForecastParams = ForecastParams(),
    regime_labels: pd.Series | None = None,
) -> list[FittedModel]:
    """Fit every model in ``params.models`` on bars dated on/before ``fit_date``.

    Training pairs are (signal at t, H-session outcome t -> t+H) with t+H <= fit_date, the last
    ``fit_lookback`` such t per symbol. ``regime_labels`` (date-indexed labels, point in time:
    the label of date t must be what was known at t) feed ``regime_mean``; without them it
    fits one unconditional mean (label ``ALL``). Each model also records the lag-1
    autocorrelation of every symbol's last ``decay.autocorr_fit_window`` daily returns up to the
    fit date (the reference for the §D3 flip factor).
    """
    fit_ts = normalize_as_of(fit_date)
    H = params.horizon
    spec = params.spec()
    warm = max(params.mom_long + 1, params.mr_lookback + 1, params.ewma_min_obs + 1)
    length = params.fit_lookback + warm + H
    panel = build_panel(bars, fit_ts, length)
    if len(panel.symbols) == 0:
        raise ValueError(f"no bars on or before {fit_ts.date()} to fit on")
    sig = _signals(panel, spec)
    y = _forward_target(sig.logp, sig.sigma, H)
    # only the last fit_lookback dates with a realised target
    in_window = np.zeros(y.shape, dtype=bool)
    in_window[:, max(0, length - H - params.fit_lookback) : length - H] = True
    y = np.where(in_window, y, np.nan)

    rho, n_ac = lag1_autocorr_rows(rolling_window(panel.returns, params.decay.autocorr_fit_window))
    fit_ac = {str(s): (float(r), int(k)) for s, r, k in zip(panel.symbols, rho, n_ac, strict=True)}

    out: list[FittedModel] = []
    for name in params.models:
        if name in ("momentum", "mean_reversion"):
            coef, diag = _fit_linear(sig.x[name], y, panel.dates, H, params.coef_prior_sd)
        elif name == "regime_mean":
            if regime_labels is None:
                regimes: list[str] = [ALL_REGIMES_LABEL]
            else:
                regimes = sorted({str(v) for v in regime_labels.dropna().to_numpy()})
            labels = _label_index(panel.dates, regime_labels, regimes, fit_ts)
            coef, diag = _fit_regime(y, panel.dates, panel.symbols, labels, regimes, params)
        else:
            raise ValueError(f"unknown model {name!r}; known: {MODEL_NAMES}")
        diag = {**diag, "fit_lookback": params.fit_lookback, "n_symbols": len(panel.symbols)}
        out.append(
            FittedModel(
                name=name,
                fit_date=fit_ts,
                horizon=H,
                spec=spec,
                coefficients=_jsonable(coef),
                diagnostics=_jsonable(diag),
                fit_autocorr=fit_ac,
            )
        )
    return out


# --------------------------------------------------------------------------------------------
# Distributions
# --------------------------------------------------------------------------------------------


def distribution_stats(
    mu: np.ndarray, sigma: np.ndarray, params: ForecastParams = ForecastParams()
) -> dict[str, np.ndarray]:
    """p_loss, var_95, cvar_95 (positive loss fractions), ci_low, ci_high for R ~ mu + sigma Z,
    Z a unit-variance Student-t(nu) (or standard normal with ``tail="normal"``)."""
    from scipy import stats  # heavy import, kept off the code-location load path

    mu = np.asarray(mu, dtype="float64")
    sigma = np.asarray(sigma, dtype="float64")
    a = 1.0 - params.cvar_alpha  # lower-tail probability
    lo_q, hi_q = (1 - params.ci_level) / 2, (1 + params.ci_level) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        if params.tail == "normal":
            s = sigma
            q = stats.norm.ppf(a)
            tail_mean = -stats.norm.pdf(q) / a  # E[Z | Z <= q]
            p_loss = stats.norm.cdf(-mu / s)
            ci_low, ci_high = mu + s * stats.norm.ppf(lo_q), mu + s * stats.norm.ppf(hi_q)
        elif params.tail == "student_t":
            nu = params.t_dof
            if nu <= 2:
                raise ValueError("t_dof must exceed 2 for a finite variance")
            s = sigma * math.sqrt((nu - 2) / nu)
            q = stats.t.ppf(a, nu)
            tail_mean = -(nu + q * q) / (nu - 1) * stats.t.pdf(q, nu) / a  # E[T | T <= q]
            p_loss = stats.t.cdf(-mu / s, nu)
            ci_low, ci_high = mu + s * stats.t.ppf(lo_q, nu), mu + s * stats.t.ppf(hi_q, nu)
        else:
            raise ValueError(f"unknown tail {params.tail!r}")
        var = -(mu + s * q)
        cvar = -(mu + s * tail_mean)
    bad = ~(np.isfinite(mu) & np.isfinite(sigma) & (sigma > 0))
    res = {"p_loss": p_loss, "var_95": var, "cvar_95": cvar, "ci_low": ci_low, "ci_high": ci_high}
    return {k: np.where(bad, np.nan, np.asarray(v, dtype="float64")) for k, v in res.items()}


def disagreement(mus: np.ndarray, sigma_h: np.ndarray, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """``d2 = Var_k(mu_k / sigma_H)`` (population variance over the finite models, per row) and
    the penalty factor ``exp(-beta d2)``. ``mus`` is (symbols, models)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        u = mus / np.asarray(sigma_h, dtype="float64")[:, None]
    fin = np.isfinite(u)
    cnt = fin.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(fin, u, 0.0).sum(axis=1) / cnt
        d2 = np.where(fin, (u - mean[:, None]) ** 2, 0.0).sum(axis=1) / cnt
    d2 = np.where(cnt > 0, d2, np.nan)
    return d2, np.exp(-beta * d2)


# --------------------------------------------------------------------------------------------
# Forecast
# --------------------------------------------------------------------------------------------


def _regime_weights(model: FittedModel, probs: Mapping[str, float] | None) -> np.ndarray:
    regimes = list(model.coefficients["regimes"])
    if probs is None:
        w = np.array([float(model.coefficients["regime_freq"].get(r) or 0.0) for r in regimes])
        return w / w.sum() if w.sum() > 0 else np.full(len(regimes), 1.0 / len(regimes))
    total = sum(max(float(v), 0.0) for v in probs.values())
    if total <= 0:
        raise ValueError("regime_probs must have positive mass")
    # mass on a regime the model never saw is kept in the total: its mean is the prior 0
    return np.array([max(float(probs.get(r, 0.0)), 0.0) / total for r in regimes])


def _regime_matrix(model: FittedModel, symbols: np.ndarray) -> np.ndarray:
    """(symbols, regimes) means in sigma units; unseen symbols take the pooled regime means."""
    regimes = list(model.coefficients["regimes"])
    pooled = np.array([float(model.coefficients["regime_mean"].get(r) or 0.0) for r in regimes])
    sm = model.coefficients.get("symbol_mean", {})
    out = np.tile(pooled, (len(symbols), 1))
    for i, s in enumerate(symbols):
        for k, r in enumerate(regimes):
            v = sm.get(str(s), {}).get(r)
            if v is not None:
                out[i, k] = float(v)
    return out


def _model_units(
    model: FittedModel,
    sig: _Signals,
    panel: Panel,
    regime_probs: Mapping[str, float] | None,
    regime_labels: pd.Series | None,
) -> tuple[np.ndarray, np.ndarray]:
    """(value in sigma_H units, signal) per (symbol, position). The last column is today's
    forecast (with ``regime_probs``); earlier columns are backcasts (with the regime label of
    that date when ``regime_labels`` is given)."""
    if model.name in ("momentum", "mean_reversion"):
        x = sig.x[model.name]
        return float(model.coefficients["beta"]) * x, x
    if model.name == "regime_mean":
        m = _regime_matrix(model, panel.symbols)
        w_now = _regime_weights(model, regime_probs)
        w_hist = _regime_weights(model, None)
        units = np.tile((m @ w_hist)[:, None], (1, panel.dates.shape[1]))
        if regime_labels is not None:
            regimes = list(model.coefficients["regimes"])
            lab = _label_index(panel.dates, regime_labels, regimes, panel.as_of)
            picked = np.take_along_axis(m, np.clip(lab, 0, None), axis=1)
            units = np.where(lab >= 0, picked, units)
        units[:, -1] = m @ w_now
        units = np.where(np.isnat(panel.dates), np.nan, units)
        return units, np.full(units.shape, np.nan)
    raise ValueError(f"unknown model {model.name!r}")


def _sigma_out(panel: Panel, sig: _Signals, params: ForecastParams) -> np.ndarray:
    """Daily vol for the output distribution: EWMA, optionally blended with the 1-year vol."""
    w = params.sigma_ewma_weight
    if w >= 1.0:
        return sig.sigma
    r = panel.returns
    L = params.long_vol_window
    # trailing 1-year variance per position via cumulative sums (zero-mean, like the EWMA)
    sq = np.where(np.isfinite(r), r * r, 0.0)
    cnt = np.cumsum(np.isfinite(r), axis=1)
    cs = np.cumsum(sq, axis=1)
    prev_cs = lag(cs, L)
    prev_cnt = lag(cnt.astype("float64"), L)
    n = cnt - np.where(np.isfinite(prev_cnt), prev_cnt, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        long_var = (cs - np.where(np.isfinite(prev_cs), prev_cs, 0.0)) / n
    long_var = np.where(n >= L, long_var, np.nan)
    return np.sqrt(w * sig.sigma**2 + (1.0 - w) * long_var)


def _check_models(models: Sequence[FittedModel], as_of: pd.Timestamp, horizon: int) -> None:
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ValueError(f"several versions of one model passed ({names}); use select_models")
    for m in models:
        if m.fit_date > as_of:
            raise ValueError(f"model {m.version} was fitted after {as_of.date()}: not point in time")
        if m.horizon != horizon:
            raise ValueError(f"model {m.version} has horizon {m.horizon}, params say {horizon}")


def _panel_for(
    models: Sequence[FittedModel],
    bars: pd.DataFrame,
    as_of: pd.Timestamp,
    params: ForecastParams,
    n_back: int,
    sorted_: SortedBars | None = None,
) -> Panel:
    warm = max(
        max(int(m.spec["mom_long"]) + 1, int(m.spec["mr_lookback"]) + 1, int(m.spec["ewma_min_obs"]) + 1)
        for m in models
    )
    warm = max(warm, params.long_vol_window + 1 if params.sigma_ewma_weight < 1 else 0)
    return build_panel(bars, as_of, warm + n_back + 1, sorted_=sorted_)


def backcast_forecasts(
    bars: pd.DataFrame,
    as_of: object,
    models: Sequence[FittedModel],
    params: ForecastParams = ForecastParams(),
    regime_labels: pd.Series | None = None,
    *,
    _panel: Panel | None = None,
    _n_back: int | None = None,
) -> pd.DataFrame:
    """What each model would have forecast on each of the last sessions before ``as_of`` whose
    outcome is known by ``as_of`` (symbol, model, model_version, date, mu, sigma).

    Each row uses only bars up to its own date; only dates on/after the model's fit date are
    kept (out of sample), so a fresh model has no error history yet.
    """
    as_of_ts = normalize_as_of(as_of)
    H = params.horizon
    n_back = _n_back if _n_back is not None else params.decay.error_window + H
    frames = []
    for m in models:
        panel = _panel if _panel is not None else _panel_for([m], bars, as_of_ts, params, n_back)
        sig = _signals(panel, m.spec)
        units, _ = _model_units(m, sig, panel, None, regime_labels)
        sig_out = _sigma_out(panel, sig, params)
        cols = slice(max(0, panel.dates.shape[1] - 1 - n_back), panel.dates.shape[1] - 1)
        d = panel.dates[:, cols]
        mu = (units * sig.sigma * math.sqrt(H))[:, cols]
        sg = (sig_out * math.sqrt(H))[:, cols]
        keep = (~np.isnat(d)) & (d >= m.fit_date.to_datetime64()) & np.isfinite(mu) & np.isfinite(sg)
        rows, cc = np.nonzero(keep)
        frames.append(
            pd.DataFrame(
                {
                    "symbol": panel.symbols[rows].astype(str),
                    "model": m.name,
                    "model_version": m.version,
                    "date": d[rows, cc],
                    "mu": mu[rows, cc],
                    "sigma": sg[rows, cc],
                }
            )
        )
    if not frames:
        return pd.DataFrame(columns=["symbol", "model", "model_version", "date", "mu", "sigma"])
    return pd.concat(frames, ignore_index=True)


def forecast(
    bars: pd.DataFrame,
    as_of: object,
    models: Sequence[FittedModel],
    params: ForecastParams = ForecastParams(),
    regime_probs: Mapping[str, float] | None = None,
    *,
    regime_labels: pd.Series | None = None,
    past_forecasts: pd.DataFrame | None = None,
    features: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-model and combined H-session forecast distributions as of ``as_of``.

    ``models``: one version per model name, each fitted on/before ``as_of`` (``select_models``).
    ``regime_probs``: current regime beliefs for ``regime_mean`` (None -> fit-window frequencies).
    ``past_forecasts`` (symbol, model, date, mu, sigma): stored earlier forecasts for the error
    factor; None -> out-of-sample backcasts of the given models (``backcast_forecasts``), with
    ``regime_labels`` giving the regime of each past date. ``features``: the as-of output of
    ``compute_market_features`` if already computed.

    Returns ``(per_model, combined)`` with columns ``PER_MODEL_COLUMNS`` and ``COMBINED_COLUMNS``.
    A symbol lacking the history for a model's signal, or flagged by the features, gets NaN
    distribution values, confidence 0 and ``INSUFFICIENT_FEATURES``.
    """
    as_of_ts = normalize_as_of(as_of)
    H = params.horizon
    models = list(models)
    if not models:
        raise ValueError("no models to forecast with")
    _check_models(models, as_of_ts, H)
    n_back = params.decay.error_window + H
    long = sorted_bars(bars, as_of_ts)  # sorted once: the panel and the decay metrics' panel
    panel = _panel_for(models, bars, as_of_ts, params, n_back, sorted_=long)
    syms = panel.symbols.astype(str)
    n_sym = len(syms)
    if n_sym == 0:
        return (pd.DataFrame(columns=PER_MODEL_COLUMNS), pd.DataFrame(columns=COMBINED_COLUMNS))

    feats = features if features is not None else compute_market_features(bars, as_of_ts, params.features)
    fo = feats.assign(symbol=feats["symbol"].astype(str)).set_index("symbol")["features_ok"]
    features_ok = fo.reindex(syms).fillna(False).to_numpy(dtype=bool)

    if past_forecasts is None:
        past_forecasts = backcast_forecasts(
            bars, as_of_ts, models, params, regime_labels, _panel=panel, _n_back=n_back
        )
    dm = decay_metrics(
        bars, as_of_ts, models, params.decay, horizon=H, past_forecasts=past_forecasts, symbols=list(syms),
        sorted_=long,
    )
    dm_idx = dm.set_index(["model", "symbol"])

    per_rows = []
    mus = np.full((n_sym, len(models)), np.nan)
    decays = np.full((n_sym, len(models)), np.nan)
    sigma_h = None
    for k, m in enumerate(models):
        sig = _signals(panel, m.spec)
        units, signal = _model_units(m, sig, panel, regime_probs, regime_labels)
        mu = units[:, -1] * sig.sigma[:, -1] * math.sqrt(H)
        sg = _sigma_out(panel, sig, params)[:, -1] * math.sqrt(H)
        ok = features_ok & np.isfinite(mu) & np.isfinite(sg) & (sg > 0)
        mu = np.where(ok, mu, np.nan)
        sg = np.where(ok, sg, np.nan)
        sigma_h = sg if sigma_h is None else np.where(np.isfinite(sigma_h), sigma_h, sg)
        dist = distribution_stats(mu, sg, params)
        d = dm_idx.loc[m.name].reindex(syms)
        decay = d["decay_factor"].to_numpy(dtype="float64")
        reasons = [
            codes_str(
                [ReasonCode(c) for c in str(rc).split(";") if c]
                + ([] if ok[i] else [ReasonCode.INSUFFICIENT_FEATURES])
            )
            for i, rc in enumerate(d["reason_codes"].fillna("").to_numpy())
        ]
        mus[:, k] = mu
        decays[:, k] = decay
        per_rows.append(
            pd.DataFrame(
                {
                    "symbol": syms,
                    "as_of": as_of_ts,
                    "model": m.name,
                    "model_version": m.version,
                    "fit_date": m.fit_date,
                    "model_age_days": int((as_of_ts - m.fit_date).days),
                    "horizon": H,
                    "signal": signal[:, -1],
                    "mu": mu,
                    "sigma": sg,
                    **dist,
                    "age_factor": d["age_factor"].to_numpy(dtype="float64"),
                    "error_rmse": d["error_rmse"].to_numpy(dtype="float64"),
                    "error_n": d["error_n"].to_numpy(dtype="int64"),
                    "error_factor": d["error_factor"].to_numpy(dtype="float64"),
                    "autocorr_recent": d["autocorr_recent"].to_numpy(dtype="float64"),
                    "autocorr_fit": d["autocorr_fit"].to_numpy(dtype="float64"),
                    "flip_factor": d["flip_factor"].to_numpy(dtype="float64"),
                    "decay_factor": decay,
                    "features_ok": ok,
                    "reason_codes": reasons,
                }
            )
        )
    per_model = pd.concat(per_rows, ignore_index=True)
    per_model = per_model.sort_values(["symbol", "model"], kind="mergesort").reset_index(drop=True)
    for c in ("symbol", "model", "model_version", "reason_codes"):
        per_model[c] = per_model[c].astype("string")

    # ---- combination (§D2) ----
    assert sigma_h is not None
    n_ok = np.isfinite(mus).sum(axis=1)
    all_ok = n_ok == len(models)
    with np.errstate(invalid="ignore"):
        mu_mean = np.where(all_ok, np.nanmean(np.where(all_ok[:, None], mus, 0.0), axis=1), np.nan)
    d2, penalty = disagreement(mus, sigma_h, params.disagreement_beta)
    d2 = np.where(all_ok, d2, np.nan)
    penalty = np.where(all_ok, penalty, np.nan)
    mu_adj = mu_mean * penalty
    sigma_c = np.where(all_ok, sigma_h, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        strength = np.clip(np.abs(mu_adj) / sigma_c / params.strength_full, 0.0, 1.0)
    decay_c = np.where(all_ok, decays.mean(axis=1), 0.0)
    confidence = np.clip(np.where(all_ok, decay_c * penalty * strength, 0.0), 0.0, 1.0)
    dist_c = distribution_stats(mu_adj, sigma_c, params)
    versions = "|".join(m.version for m in sorted(models, key=lambda m: m.name))
    ages = max(int((as_of_ts - m.fit_date).days) for m in models)
    model_reasons = per_model.groupby("symbol", sort=False)["reason_codes"].agg(
        lambda s: sorted({c for rc in s for c in str(rc).split(";") if c})
    )
    comb_reasons = []
    for i, s in enumerate(syms):
        codes = [ReasonCode(c) for c in model_reasons.get(s, [])]
        if not all_ok[i] and ReasonCode.INSUFFICIENT_FEATURES not in codes:
            codes.append(ReasonCode.INSUFFICIENT_FEATURES)
        if all_ok[i] and penalty[i] < params.disagreement_flag_below:
            codes.append(ReasonCode.MODEL_DISAGREEMENT)
        comb_reasons.append(codes_str(codes))
    combined = pd.DataFrame(
        {
            "symbol": pd.array(syms, dtype="string"),
            "as_of": as_of_ts,
            "horizon": H,
            "n_models": n_ok.astype("int64"),
            "mu": mu_mean,
            "disagreement_var": d2,
            "disagreement_factor": penalty,
            "mu_adj": mu_adj,
            "sigma": sigma_c,
            **dist_c,
            "agreement": penalty,
            "strength": strength,
            "decay_factor": decay_c,
            "confidence": confidence,
            "model_version": versions,
            "model_age_days": ages,
            "features_ok": all_ok,
            "reason_codes": pd.array(comb_reasons, dtype="string"),
        }
    )
    combined["model_version"] = combined["model_version"].astype("string")
    return per_model[PER_MODEL_COLUMNS], combined[COMBINED_COLUMNS]
