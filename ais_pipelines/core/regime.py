"""Market regime as a probability flow (§C1–C4).

The market is modelled as a three-state Markov-switching process on the daily returns of an
equal-weight market index: each state has its own mean and variance, and a fitted transition
matrix ``P`` (rows = from, cols = to) moves the probability mass between states from one
session to the next. States are labelled by increasing variance, so ``CRISIS`` is always the
highest-variance state of the fitted window.

What the rest of the system consumes:

* ``fit_regime_model`` → a :class:`RegimeFitOutcome`: the fit actually used, the filtered
  (real-time, point-in-time) probabilities per session, reason codes and a fallback flag.
* ``crisis_probability_within`` → ``p_crisis_5d`` (§C2): probability of being in CRISIS now or
  entering it within the next 5 sessions, computed from the belief and ``P`` (no heuristic).
* ``regime_inputs`` → the §C3 context recorded with every snapshot.
* ``regime_snapshot`` → one row per as-of session with the de-risk / reduce-only decision (§C4).

Failure policy (fail closed):

* a fresh fit that does not converge or is degenerate is rejected; the last good fit
  (``previous``) is used instead, re-filtered on the new data (reason
  ``REGIME_FALLBACK_LAST_GOOD_FIT``);
* with no usable fit at all the outcome carries ``REGIME_FIT_FAILED`` and no fit, and
  ``regime_snapshot`` then reports the market as CRISIS with ``p_crisis_5d = 1``: de-risk to
  ``min_scale`` and reduce-only. Not knowing the regime is treated as the worst regime.

Units: ``returns`` passed in are fractional (0.01 = 1 %). The model is fitted on percent
returns (×100) because the optimiser is badly conditioned on variances of order 1e-4; the
stored per-regime means and variances are therefore in percent and %² (``daily_vol`` gives the
fractional daily volatility).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np
import pandas as pd

from ais_pipelines.core.correlation import mean_pairwise_corr
from ais_pipelines.core.reason_codes import ReasonCode

REGIMES: tuple[str, str, str] = ("NORMAL", "VOLATILE", "CRISIS")
CRISIS_INDEX = REGIMES.index("CRISIS")
MODEL_VERSION = "ms3-switching-variance-v1"
RETURN_SCALE = 100.0  # fractional → percent returns for the optimiser
CRISIS_HORIZON_SESSIONS = 5  # §C2: "within the next 5 sessions"
DEFAULT_CRISIS_THRESHOLD = 0.15  # §C4
TRADING_DAYS = 252

DateLike = date | str | pd.Timestamp


# --------------------------------------------------------------------------------------------
# Market index
# --------------------------------------------------------------------------------------------


def build_market_index(closes: pd.DataFrame, base: float = 100.0) -> pd.Series:
    """Equal-weight index level from a wide close frame (dates × symbols), starting at ``base``.

    Each session's index return is the plain average of the daily returns that exist that day,
    so a late listing joins the average from its second close and a symbol with a gap drops out
    for the session after the gap (its multi-day return is not booked as a one-day move).
    Non-positive prices are treated as missing. A session where no symbol has a return carries
    the previous level forward.
    """
    if closes.empty:
        return pd.Series(dtype=float, name="index_close")
    px = closes.sort_index()
    if not all(pd.api.types.is_float_dtype(t) for t in px.dtypes):  # (to_numeric of floats is a no-op)
        px = px.apply(pd.to_numeric, errors="coerce")
    px = px.astype(float)
    px = px.where(px > 0)
    rets = px.pct_change(fill_method=None)
    avg = rets.mean(axis=1, skipna=True).fillna(0.0)
    avg.iloc[0] = 0.0  # the first session defines the base level
    level = base * (1.0 + avg).cumprod()
    level.name = "index_close"
    return level


# --------------------------------------------------------------------------------------------
# Fit containers
# --------------------------------------------------------------------------------------------


def _to_date(d: DateLike) -> date:
    return pd.Timestamp(d).date()


@dataclass(frozen=True)
class RegimeFit:
    """A fitted 3-state model, labelled NORMAL < VOLATILE < CRISIS by variance.

    Immutable and JSON-serialisable (``to_dict``/``from_dict``) so it can be stored in the
    warehouse and reloaded as ``previous`` for the next night's fit.
    """

    transition: tuple[tuple[float, ...], ...]  # P[i][j] = Pr(s_{t+1}=j | s_t=i)
    means_pct: tuple[float, ...]  # per-regime mean daily return, percent
    variances_pct: tuple[float, ...]  # per-regime variance of daily percent returns, %²
    fit_start: date
    fit_end: date
    n_obs: int
    loglike: float
    converged: bool
    seed: int = 0
    start: str = "cold"  # which start won: "cold", "previous" or "search"
    model_version: str = MODEL_VERSION
    regimes: tuple[str, ...] = field(default=REGIMES)

    @property
    def P(self) -> np.ndarray:  # noqa: N802 - the conventional name of a transition matrix
        return np.array(self.transition, dtype=float)

    @property
    def daily_vol(self) -> np.ndarray:
        """Per-regime daily volatility as a fraction (0.01 = 1 %)."""
        return np.sqrt(np.array(self.variances_pct)) / RETURN_SCALE

    @property
    def stationary(self) -> np.ndarray:
        """Long-run share of sessions in each regime (left unit eigenvector of ``P``)."""
        return _stationary(self.P)

    @property
    def expected_duration(self) -> np.ndarray:
        """Expected sessions spent in a regime once entered: 1 / (1 − P_ii)."""
        stay = np.diag(self.P)
        with np.errstate(divide="ignore"):
            return np.where(stay < 1.0, 1.0 / (1.0 - stay), np.inf)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_version": self.model_version,
            "regimes": list(self.regimes),
            "transition": [list(row) for row in self.transition],
            "means_pct": list(self.means_pct),
            "variances_pct": list(self.variances_pct),
            "fit_start": self.fit_start.isoformat(),
            "fit_end": self.fit_end.isoformat(),
            "n_obs": self.n_obs,
            "loglike": self.loglike,
            "converged": self.converged,
            "seed": self.seed,
            "start": self.start,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RegimeFit:
        return cls(
            transition=tuple(tuple(float(x) for x in row) for row in d["transition"]),
            means_pct=tuple(float(x) for x in d["means_pct"]),
            variances_pct=tuple(float(x) for x in d["variances_pct"]),
            fit_start=_to_date(d["fit_start"]),
            fit_end=_to_date(d["fit_end"]),
            n_obs=int(d["n_obs"]),
            loglike=float(d["loglike"]),
            converged=bool(d["converged"]),
            seed=int(d.get("seed", 0)),
            start=str(d.get("start", "cold")),
            model_version=str(d.get("model_version", MODEL_VERSION)),
            regimes=tuple(d.get("regimes", REGIMES)),
        )


@dataclass(frozen=True)
class RegimeFitOutcome:
    """What ``fit_regime_model`` decided.

    ``fit`` is ``None`` only when nothing usable exists (reason ``REGIME_FIT_FAILED``); callers
    must then fail closed (``regime_snapshot`` does: CRISIS, reduce-only).
    """

    fit: RegimeFit | None
    filtered: pd.DataFrame  # dates × REGIMES, filtered (real-time) probabilities
    reason_codes: tuple[ReasonCode, ...] = ()
    is_fallback: bool = False
    detail: str = ""  # why a fresh fit was rejected, for the audit record
    refitted: bool = True  # False: filtered nightly with a stored fit (refit on its cadence)

    @property
    def failed(self) -> bool:
        return self.fit is None


# --------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------


def _stationary(P: np.ndarray) -> np.ndarray:
    k = P.shape[0]
    # Solve pi (P − I) = 0 with sum(pi) = 1 as a least-squares system (robust to reducible P).
    A = np.vstack([P.T - np.eye(k), np.ones(k)])
    b = np.r_[np.zeros(k), 1.0]
    pi = np.linalg.lstsq(A, b, rcond=None)[0]
    pi = np.clip(pi, 0.0, None)
    return pi / pi.sum()


def _clean_returns(returns: pd.Series) -> pd.Series:
    s = pd.Series(returns, dtype=float).sort_index()
    s.index = pd.DatetimeIndex(s.index)
    return s.dropna()


def _fit_start(y_pct: np.ndarray, start: np.ndarray, em_iter: int, max_iter: int, search_reps: int, seed: int,
               model: Any = None) -> tuple[np.ndarray, bool]:
    """One optimiser run from ``start``: (parameters, converged). A module function, so a
    process pool can run it (``model`` is rebuilt there from the returns)."""
    model = _make_model(y_pct) if model is None else model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence is checked by the caller
        res = model.fit(start_params=start, em_iter=em_iter, maxiter=max_iter, cov_type="none",
                        search_reps=search_reps, rng=seed)
    return np.asarray(res.params, dtype=float), bool(res.mle_retvals.get("converged", False))


def _make_model(y_pct: np.ndarray) -> Any:
    from statsmodels.tsa.regime_switching.markov_regression import MarkovRegression

    from ais_pipelines.core.markov_logsumexp import install

    install()  # SciPy's logsumexp arithmetic without its per-call dispatch (half of a fit)

    return MarkovRegression(y_pct, k_regimes=3, trend="c", switching_variance=True)


_NAME = re.compile(r"^(p|const|sigma2)\[(\d+)(?:->(\d+))?\]$")


def _pack_params(model: Any, P: np.ndarray, means: np.ndarray, variances: np.ndarray) -> np.ndarray:
    """statsmodels parameter vector for (relabelled) P, means and variances, by param name."""
    out = np.empty(len(model.param_names))
    for n, name in enumerate(model.param_names):
        m = _NAME.match(name)
        if m is None:  # pragma: no cover - guards against a statsmodels naming change
            raise RuntimeError(f"unexpected MarkovRegression parameter {name!r}")
        kind, a, b = m.group(1), int(m.group(2)), m.group(3)
        if kind == "p":
            out[n] = P[a, int(b)]
        elif kind == "const":
            out[n] = means[a]
        else:
            out[n] = variances[a]
    return out


def _unpack_params(model: Any, params: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # statsmodels returns the transition matrix as [to, from]; we keep rows = from.
    P = np.asarray(model.regime_transition_matrix(params))[:, :, 0].T
    names = model.param_names
    means = np.array([params[names.index(f"const[{k}]")] for k in range(3)])
    variances = np.array([params[names.index(f"sigma2[{k}]")] for k in range(3)])
    return P, means, variances


def _cold_start(y_pct: np.ndarray, model: Any) -> np.ndarray:
    # Persistent states with variances spread around the sample variance; fixed, so the fit
    # is reproducible without any randomness.
    s2 = float(np.var(y_pct))
    P = np.full((3, 3), 0.025)
    np.fill_diagonal(P, 0.95)
    return _pack_params(model, P, np.full(3, float(np.mean(y_pct))), s2 * np.array([0.3, 1.0, 4.0]))


def _filter_probs(model: Any, params: np.ndarray) -> tuple[np.ndarray, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # log(0) warnings from near-absorbing transitions
        res = model.filter(params, cov_type="none")
    return np.asarray(res.filtered_marginal_probabilities), float(res.llf)


def _degeneracy(
    P: np.ndarray,
    means: np.ndarray,
    variances: np.ndarray,
    probs: np.ndarray,
    loglike: float,
    *,
    min_regime_mass: float,
    min_variance_ratio: float,
) -> str | None:
    """Why a (relabelled) fit is unusable, or ``None`` if it is fine."""
    if not (np.all(np.isfinite(P)) and np.all(np.isfinite(means)) and np.all(np.isfinite(variances))):
        return "non-finite parameters"
    if not math.isfinite(loglike):
        return "non-finite log-likelihood"
    if np.any(P < -1e-12) or np.any(P > 1 + 1e-12) or np.max(np.abs(P.sum(axis=1) - 1.0)) > 1e-8:
        return "transition matrix is not row-stochastic"
    if np.any(variances <= 1e-10):
        return "a regime has zero variance"
    ratios = variances[1:] / variances[:-1]
    if np.any(ratios < min_variance_ratio):
        # Two states with (almost) the same variance cannot be told apart: labels are arbitrary.
        return f"regime variances not separated (ratios {np.round(ratios, 3).tolist()})"
    mass = probs.mean(axis=0) if probs.size else np.zeros(3)
    if np.any(~np.isfinite(mass)) or np.any(mass < min_regime_mass):
        return f"a regime has ~zero probability mass ({np.round(mass, 4).tolist()})"
    return None


def _refilter(previous: RegimeFit, clean: pd.Series) -> pd.DataFrame:
    """Filtered probabilities on new data with the old parameters (not the old beliefs)."""
    y = clean[np.isfinite(clean.to_numpy())]
    if y.empty:
        return _empty_probs()
    model = _make_model(y.to_numpy() * RETURN_SCALE)
    params = _pack_params(model, previous.P, np.array(previous.means_pct), np.array(previous.variances_pct))
    probs, _ = _filter_probs(model, params)
    return pd.DataFrame(probs, index=y.index, columns=list(REGIMES))


def _empty_probs() -> pd.DataFrame:
    return pd.DataFrame(columns=list(REGIMES), index=pd.DatetimeIndex([], name="date"), dtype=float)


def fit_regime_model(
    returns: pd.Series,
    *,
    seed: int = 0,
    previous: RegimeFit | None = None,
    max_iter: int = 500,
    em_iter: int = 50,
    search_reps: int = 0,
    min_obs: int = 250,
    min_regime_mass: float = 0.01,
    min_variance_ratio: float = 1.5,
    executor: Executor | None = None,
) -> RegimeFitOutcome:
    """Fit the 3-state switching-variance model to daily (fractional) index returns.

    Deterministic: a fixed cold start (plus ``previous`` as a warm start when given, plus
    ``search_reps`` random starts drawn from ``seed``), ``em_iter`` EM steps then BFGS for at
    most ``max_iter`` iterations; the converged, non-degenerate candidate with the highest
    log-likelihood wins. If none qualifies, fall back to ``previous`` re-filtered on the new
    data (``REGIME_FALLBACK_LAST_GOOD_FIT``), else ``REGIME_FIT_FAILED`` with no fit.

    Rejected as unusable: non-finite returns, fewer than ``min_obs`` returns, a constant
    series, a non-converged optimiser, non-finite parameters, adjacent regime variances closer
    than ``min_variance_ratio`` (labels would be arbitrary; on i.i.d. noise the spurious third
    state typically lands here), or a regime with mean filtered probability below
    ``min_regime_mass``.

    ``executor`` (e.g. a one-worker process pool) runs the ``previous`` start beside the cold
    one; the outcome is the one without it.
    """
    clean = _clean_returns(returns)
    failures: list[str] = []
    best: tuple[float, RegimeFit, pd.DataFrame] | None = None

    y = clean.to_numpy()
    if not np.all(np.isfinite(y)):
        failures.append("non-finite returns")
    elif len(y) < min_obs:
        failures.append(f"too few observations ({len(y)} < {min_obs})")
    elif float(np.var(y)) <= 1e-16:
        failures.append("constant return series")
    else:
        y_pct = y * RETURN_SCALE
        model = _make_model(y_pct)
        starts: list[tuple[str, np.ndarray]] = [("cold", _cold_start(y_pct, model))]
        if previous is not None:
            starts.append(
                (
                    "previous",
                    _pack_params(
                        model, previous.P, np.array(previous.means_pct), np.array(previous.variances_pct)
                    ),
                )
            )
        # The later starts run on ``executor`` (another process) while this one runs the first:
        # the same computation, so the same fit (issue 12: a refit is two optimiser runs).
        fits: list[Any] = [None] * len(starts)
        if executor is not None and len(starts) > 1:
            fits[1:] = [executor.submit(_fit_start, y_pct, sp, em_iter, max_iter, 0, seed) for _, sp in starts[1:]]
        for k, (name, sp) in enumerate(starts):
            try:
                if fits[k] is None:
                    params, converged = _fit_start(y_pct, sp, em_iter, max_iter,
                                                   search_reps if name == "cold" else 0, seed, model)
                else:
                    params, converged = fits[k].result()
                P, means, variances = _unpack_params(model, params)
                order = np.argsort(variances, kind="stable")
                P = P[np.ix_(order, order)]
                P = P / P.sum(axis=1, keepdims=True)
                means, variances = means[order], variances[order]
                rel = _pack_params(model, P, means, variances)
                probs, llf = _filter_probs(model, rel)
            except (ValueError, FloatingPointError, np.linalg.LinAlgError, RuntimeError) as exc:
                failures.append(f"{name}: {type(exc).__name__}: {exc}")
                continue
            if not converged:
                failures.append(f"{name}: optimiser did not converge in {max_iter} iterations")
                continue
            why = _degeneracy(
                P,
                means,
                variances,
                probs,
                llf,
                min_regime_mass=min_regime_mass,
                min_variance_ratio=min_variance_ratio,
            )
            if why is not None:
                failures.append(f"{name}: {why}")
                continue
            fit = RegimeFit(
                transition=tuple(tuple(float(x) for x in row) for row in P),
                means_pct=tuple(float(x) for x in means),
                variances_pct=tuple(float(x) for x in variances),
                fit_start=clean.index[0].date(),
                fit_end=clean.index[-1].date(),
                n_obs=len(y),
                loglike=llf,
                converged=converged,
                seed=seed,
                start="search" if (name == "cold" and search_reps > 0) else name,
            )
            if best is None or llf > best[0]:
                best = (llf, fit, pd.DataFrame(probs, index=clean.index, columns=list(REGIMES)))

    if best is not None:
        return RegimeFitOutcome(fit=best[1], filtered=best[2], detail="; ".join(failures))

    detail = "; ".join(failures)
    if previous is not None:
        try:
            probs_df = _refilter(previous, clean)
        except (ValueError, FloatingPointError, np.linalg.LinAlgError, RuntimeError) as exc:
            detail += f"; fallback filter failed: {type(exc).__name__}: {exc}"
        else:
            return RegimeFitOutcome(
                fit=previous,
                filtered=probs_df,
                reason_codes=(ReasonCode.REGIME_FALLBACK_LAST_GOOD_FIT,),
                is_fallback=True,
                detail=detail,
            )
    return RegimeFitOutcome(
        fit=None, filtered=_empty_probs(), reason_codes=(ReasonCode.REGIME_FIT_FAILED,), detail=detail
    )


def refit_due(previous: RegimeFit | None, returns: pd.Series, every_sessions: int) -> bool:
    """A fresh fit is due when there is no fit yet, or ``every_sessions`` new returns have come
    in since the fit's last observation (the declared cadence); otherwise the night only filters."""
    if previous is None:
        return True
    clean = _clean_returns(returns)
    new = int((clean.index > pd.Timestamp(previous.fit_end)).sum())
    return new >= every_sessions


def filter_regime_model(returns: pd.Series, fit: RegimeFit) -> RegimeFitOutcome | None:
    """The nightly step between refits: filtered probabilities on the returns up to D with the
    parameters of ``fit`` (no optimisation). ``None`` when the data cannot be filtered (non-finite
    or too short): the caller then fits, which records why."""
    clean = _clean_returns(returns)
    y = clean.to_numpy()
    if len(y) == 0 or not np.all(np.isfinite(y)):
        return None
    try:
        probs = _refilter(fit, clean)
    except (ValueError, FloatingPointError, np.linalg.LinAlgError, RuntimeError):
        return None
    return RegimeFitOutcome(fit=fit, filtered=probs, refitted=False,
                            detail=f"filtered with the fit through {fit.fit_end} (refit on its cadence)")


# --------------------------------------------------------------------------------------------
# Probability flow (§C2)
# --------------------------------------------------------------------------------------------


def _check_belief_and_P(belief: np.ndarray, P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    b = np.asarray(belief, dtype=float).ravel()
    M = np.asarray(P, dtype=float)
    k = b.size
    if M.shape != (k, k):
        raise ValueError(f"P must be {k}x{k}, got {M.shape}")
    if not (np.all(np.isfinite(b)) and np.all(np.isfinite(M))):
        raise ValueError("belief and P must be finite")
    if np.any(b < -1e-12) or abs(b.sum() - 1.0) > 1e-6:
        raise ValueError("belief must be a probability vector")
    if np.any(M < -1e-12) or np.max(np.abs(M.sum(axis=1) - 1.0)) > 1e-6:
        raise ValueError("P must be row-stochastic (rows = from, cols = to)")
    return np.clip(b, 0.0, None) / np.clip(b, 0.0, None).sum(), M


def crisis_probability_within(
    belief: np.ndarray, P: np.ndarray, horizon: int = CRISIS_HORIZON_SESSIONS
) -> float:
    """Pr(in CRISIS now or at any of the next ``horizon`` sessions).

    Complement of staying out of CRISIS for ``horizon + 1`` consecutive states: with ``Q`` the
    sub-stochastic block of ``P`` on the non-crisis states,
    ``1 − b_N · Q^horizon · 1``. CRISIS is the last state (``REGIMES`` order).
    """
    if horizon < 0:
        raise ValueError("horizon must be >= 0")
    b, M = _check_belief_and_P(belief, P)
    crisis = b.size - 1
    keep = [i for i in range(b.size) if i != crisis]
    Q = M[np.ix_(keep, keep)]
    stay_out = b[keep] @ np.linalg.matrix_power(Q, horizon) @ np.ones(len(keep))
    return float(min(1.0, max(0.0, 1.0 - stay_out)))


def regime_forecast(
    belief: np.ndarray, P: np.ndarray, horizon: int = CRISIS_HORIZON_SESSIONS
) -> dict[str, float]:
    """Probability of each regime at t + ``horizon``: ``belief · P^horizon``."""
    if horizon < 0:
        raise ValueError("horizon must be >= 0")
    b, M = _check_belief_and_P(belief, P)
    out = b @ np.linalg.matrix_power(M, horizon)
    return {name: float(p) for name, p in zip(REGIMES, out, strict=True)}


def exposure_scale(
    p_crisis: float, threshold: float = DEFAULT_CRISIS_THRESHOLD, min_scale: float = 0.0
) -> float:
    """Pre-emptive de-risking multiplier (§C4).

    1 while ``p_crisis ≤ threshold``; above it, falls linearly to ``min_scale`` at p = 1:
    ``1 − (1 − min_scale) · (p − threshold) / (1 − threshold)``.
    """
    if not 0.0 <= threshold < 1.0:
        raise ValueError("threshold must be in [0, 1)")
    if not 0.0 <= min_scale <= 1.0:
        raise ValueError("min_scale must be in [0, 1]")
    p = min(1.0, max(0.0, float(p_crisis)))
    if p <= threshold:
        return 1.0
    return float(1.0 - (1.0 - min_scale) * (p - threshold) / (1.0 - threshold))


# --------------------------------------------------------------------------------------------
# Recorded inputs (§C3)
# --------------------------------------------------------------------------------------------


def _avg_pairwise_corr(window: pd.DataFrame, min_periods: int) -> float:
    """Mean of the upper triangle of ``window.corr(min_periods=…)``, finite pairs only, in O(N·T)."""
    return mean_pairwise_corr(window.to_numpy(dtype=np.float64), min_periods)


def _garch_vix(log_ret: pd.Series, horizon: int = 21, window: int = 1260) -> float:
    from arch import arch_model

    y = log_ret.iloc[-window:] * RETURN_SCALE
    if len(y) < 250:
        return float("nan")
    am = arch_model(y.to_numpy(), mean="Constant", vol="GARCH", p=1, q=1, dist="normal", rescale=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = am.fit(disp="off")
    var_path = res.forecast(horizon=horizon, reindex=False).variance.to_numpy()[-1]
    # Like the VIX: expected volatility over the next ~month, annualised, in vol points.
    return float(np.sqrt(TRADING_DAYS * np.mean(var_path)))


def regime_inputs(
    index_close: pd.Series,
    returns: pd.DataFrame,
    as_of: DateLike,
    *,
    vol_window: int = 21,
    sma_window: int = 200,
    corr_short: int = 21,
    corr_long: int = 252,
    garch: bool = False,
) -> dict[str, Any]:
    """The §C3 context at ``as_of``, using nothing dated after it.

    * ``index_vs_sma200``: index close / mean of the last 200 closes − 1.
    * ``realized_vol_21d``: annualised std of the last 21 daily log returns of the index.
    * ``vol_percentile``: share of the index's own 21-session vol history (≤ as_of) that is
      ≤ today's value (1.0 = highest ever seen).
    * ``vix_proxy``: ``realized_vol_21d × 100`` (method ``realized_21d``), or with
      ``garch=True`` the annualised mean GARCH(1,1) variance forecast over the next 21
      sessions fitted on the last 1260 returns (method ``garch11_21d``). The realized proxy is
      always recorded as ``vix_proxy_realized``.
    * ``corr_spike``: average pairwise correlation of constituent returns over the last 21
      sessions minus that over the last 252.
    """
    ts = pd.Timestamp(as_of).normalize()
    close = pd.Series(index_close, dtype=float).sort_index()
    close.index = pd.DatetimeIndex(close.index)
    close = close.loc[:ts].dropna()
    rets = returns.sort_index()
    rets.index = pd.DatetimeIndex(rets.index)
    rets = rets.loc[:ts]

    nan = float("nan")
    out: dict[str, Any] = {
        "as_of": ts.date().isoformat(),
        "data_as_of": close.index[-1].date().isoformat() if len(close) else None,
        "index_close": float(close.iloc[-1]) if len(close) else nan,
    }

    sma = float(close.iloc[-sma_window:].mean()) if len(close) >= sma_window else nan
    out["index_sma200"] = sma
    out["index_vs_sma200"] = out["index_close"] / sma - 1.0 if math.isfinite(sma) else nan

    log_ret = np.log(close).diff().dropna()
    vol_hist = log_ret.rolling(vol_window).std(ddof=1).dropna() * math.sqrt(TRADING_DAYS)
    rv = float(vol_hist.iloc[-1]) if len(vol_hist) else nan
    out["realized_vol_21d"] = rv
    out["vol_percentile"] = float((vol_hist <= rv).mean()) if len(vol_hist) else nan
    out["vol_history_n"] = len(vol_hist)
    out["vix_proxy_realized"] = rv * 100.0
    out["vix_proxy_garch"] = _garch_vix(log_ret, horizon=vol_window) if garch else nan
    out["vix_proxy_method"] = "garch11_21d" if garch else "realized_21d"
    out["vix_proxy"] = out["vix_proxy_garch"] if garch else out["vix_proxy_realized"]

    c_short = _avg_pairwise_corr(rets.iloc[-corr_short:], min_periods=max(2, (2 * corr_short) // 3))
    c_long = _avg_pairwise_corr(rets.iloc[-corr_long:], min_periods=max(2, (2 * corr_long) // 3))
    out["corr_21d"] = c_short
    out["corr_252d"] = c_long
    out["corr_spike"] = c_short - c_long
    return out


# --------------------------------------------------------------------------------------------
# Snapshot (§C4)
# --------------------------------------------------------------------------------------------


def regime_snapshot(
    outcome: RegimeFitOutcome,
    as_of: DateLike,
    *,
    inputs: Mapping[str, Any] | None = None,
    threshold: float = DEFAULT_CRISIS_THRESHOLD,
    min_scale: float = 0.0,
    allow_lookahead: bool = False,
) -> dict[str, Any]:
    """One as-of row: regime, beliefs, 5-session forecasts, ``p_crisis_5d`` and the decision.

    * ``regime`` = argmax of the filtered belief on the last session ≤ ``as_of``.
    * ``derisk`` = ``p_crisis_5d > threshold`` (``CRISIS_PROBABILITY_HIGH``), with
      ``exposure_scale`` from :func:`exposure_scale`.
    * ``reduce_only`` = regime is CRISIS (``CRISIS_REGIME``): no risk-increasing order.
    * Fail closed: with no fit (``REGIME_FIT_FAILED``) or no belief on/before ``as_of``
      (``INSUFFICIENT_HISTORY``) the row reports CRISIS, ``p_crisis_5d = 1``, reduce-only and
      ``exposure_scale = min_scale``; beliefs are NaN because nothing was measured.

    A fit whose window ends after ``as_of`` would leak the future into a replay, so it raises
    unless ``allow_lookahead`` (in-sample analysis only).
    """
    ts = pd.Timestamp(as_of).normalize()
    fit = outcome.fit
    codes: list[ReasonCode] = list(outcome.reason_codes)
    nan = float("nan")
    row: dict[str, Any] = {
        "as_of": ts.date().isoformat(),
        "threshold": float(threshold),
        "min_scale": float(min_scale),
        "horizon_sessions": CRISIS_HORIZON_SESSIONS,
    }

    if fit is not None and not allow_lookahead and pd.Timestamp(fit.fit_end) > ts:
        raise ValueError(f"regime fit ends {fit.fit_end} after as_of {ts.date()}: look-ahead")

    belief: np.ndarray | None = None
    belief_date: pd.Timestamp | None = None
    if fit is not None:
        past = outcome.filtered.loc[:ts]
        if len(past):
            belief_date = pd.Timestamp(past.index[-1])
            belief = past.iloc[-1].to_numpy(dtype=float)
        else:
            codes.append(ReasonCode.INSUFFICIENT_HISTORY)

    if fit is None or belief is None:
        row.update({"regime": "CRISIS", "belief_date": None, "fail_closed": True})
        row.update({f"belief_{r.lower()}": nan for r in REGIMES})
        row.update({f"p_{r.lower()}_t5": nan for r in REGIMES})
        p5 = 1.0
    else:
        P = fit.P
        row["regime"] = REGIMES[int(np.argmax(belief))]
        row["belief_date"] = belief_date.date().isoformat() if belief_date is not None else None
        row["fail_closed"] = False
        row.update({f"belief_{r.lower()}": float(b) for r, b in zip(REGIMES, belief, strict=True)})
        fc = regime_forecast(belief, P, CRISIS_HORIZON_SESSIONS)
        row.update({f"p_{r.lower()}_t5": fc[r] for r in REGIMES})
        p5 = crisis_probability_within(belief, P, CRISIS_HORIZON_SESSIONS)

    row["p_crisis_5d"] = p5
    row["derisk"] = bool(p5 > threshold)
    row["reduce_only"] = row["regime"] == "CRISIS"
    row["exposure_scale"] = exposure_scale(p5, threshold, min_scale)
    if row["derisk"]:
        codes.append(ReasonCode.CRISIS_PROBABILITY_HIGH)
    if row["reduce_only"]:
        codes.append(ReasonCode.CRISIS_REGIME)
    row["reason_codes"] = [str(c) for c in dict.fromkeys(codes)]

    row["fit_is_fallback"] = outcome.is_fallback
    row["fit_detail"] = outcome.detail
    row["fit_refitted"] = outcome.refitted
    if fit is not None:
        row.update(
            {
                "fit_model_version": fit.model_version,
                "fit_start": fit.fit_start.isoformat(),
                "fit_end": fit.fit_end.isoformat(),
                "fit_n_obs": fit.n_obs,
                "fit_loglike": fit.loglike,
                "fit_converged": fit.converged,
                "transition": [list(r) for r in fit.transition],
                "regime_daily_vol": fit.daily_vol.tolist(),
            }
        )
    else:
        row.update(
            {
                "fit_model_version": None,
                "fit_start": None,
                "fit_end": None,
                "fit_n_obs": 0,
                "fit_loglike": nan,
                "fit_converged": False,
                "transition": None,
                "regime_daily_vol": None,
            }
        )
    if inputs is not None:
        row.update({k: v for k, v in inputs.items() if k not in ("as_of",)})
    return row
