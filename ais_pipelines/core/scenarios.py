"""Scenario generation for the CVaR-first risk core (§F1, §G2).

A scenario is one historical, overlapping window of ``horizon`` sessions: its row holds the
H-session **simple** return of every symbol over that window. The auction's expected returns
(``mu_adj``) and its CVaR limit are on the same H-session horizon (§F1a), so the scenarios are
built on that horizon too, never on daily returns.

Inputs are daily **log** returns (dates × symbols), point in time: the caller passes only the
rows known at the decision date (nothing after the as-of session), and this module never looks
beyond the last row it is given.

Missing values (late listings, gaps)
------------------------------------
* Only the last ``lookback`` rows are used.
* A symbol with fewer than ``min_coverage × lookback`` valid daily returns in that window is
  **dropped** (listed in ``Scenarios.dropped``): its tail cannot be estimated, and the tradability
  gate (§B5, ≥ 1260 sessions) should already have excluded it as ``INSUFFICIENT_HISTORY``.
* For the symbols kept, a missing daily log return (before the listing date or inside a gap)
  is filled with the **cross-sectional mean** log return of the symbols that have data that
  day (0 if none has). Filling with 0 would make a late listing look riskless during the
  market's worst days; the market proxy (beta 1) keeps the common crash in its tail. The filled
  fraction per symbol is reported in ``Scenarios.filled_fraction``.

Scenario probabilities
----------------------
* ``weighting="equal"``: every window has probability 1/T (this is what skfolio and
  PyPortfolioOpt assume, so historical CVaR then matches ``skfolio.measures.cvar`` exactly).
* ``weighting="regime"``: probabilities are tilted toward windows that *started* in the regime
  we believe we are in now. With ``q_t`` the filtered regime probabilities at the start of window
  ``t`` (the information a forecaster had when that window began) and ``b`` the current belief,
  the similarity is ``s_t = Σ_k b_k · q_{t,k}`` (probability both days are in the same regime),
  and ``p_t = (1 − tilt) / T + tilt · s_t / Σ s``. The uniform share (``regime_tilt < 1``,
  default 0.5) keeps every historical window in play, so that a rare regime (few crisis days)
  never collapses the tail estimate onto a handful of scenarios. Windows whose start date has
  no regime estimate get the mean similarity (they are neither favoured nor discarded).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

DEFAULT_HORIZON = 5  # sessions; see ais_pipelines.core.auction for the reasoning
DEFAULT_LOOKBACK = 1260  # sessions (~5 years, §B1/§B5)
DEFAULT_MIN_COVERAGE = 0.8
DEFAULT_REGIME_TILT = 0.5


@dataclass(frozen=True)
class Scenarios:
    """T × N matrix of H-session simple returns plus scenario probabilities.

    ``end_dates[t]`` is the last session of window ``t``: a stable key for the scenario, used by
    the auction solver to line up rows between sessions (warm start) and for audit.
    """

    returns: np.ndarray  # (T, N) simple returns over `horizon` sessions
    probs: np.ndarray  # (T,) non-negative, sums to 1
    symbols: list[str]
    end_dates: pd.Index
    horizon: int
    lookback: int
    weighting: str
    dropped: list[str] = field(default_factory=list)
    filled_fraction: dict[str, float] = field(default_factory=dict)

    @property
    def n_scenarios(self) -> int:
        return int(self.returns.shape[0])

    @property
    def n_symbols(self) -> int:
        return int(self.returns.shape[1])

    def to_frame(self) -> pd.DataFrame:
        """Scenario returns as a DataFrame (index: window end date, columns: symbols)."""
        return pd.DataFrame(self.returns, index=self.end_dates, columns=self.symbols)

    def to_long(self) -> pd.DataFrame:
        """One row per (scenario, symbol), symbol by symbol (the ``scenario_returns`` table):
        scenario_end, symbol, ret, prob, horizon, weighting. What ``to_frame().melt`` gives, built
        from the arrays (the table has T × N rows)."""
        wide = self.to_frame()
        t, n = wide.shape
        return pd.DataFrame({
            "scenario_end": np.tile(wide.index.to_numpy(), n),
            "symbol": pd.array(np.repeat(wide.columns.to_numpy(), t), dtype=wide.columns.dtype),
            "ret": self.returns.ravel(order="F"),
            "prob": np.tile(np.asarray(self.probs, dtype="float64"), n),
            "horizon": self.horizon,
            "weighting": self.weighting,
        })

    def effective_sample_size(self) -> float:
        """Kish effective number of scenarios, 1 / Σ p² (= T for equal weights)."""
        return float(1.0 / np.sum(self.probs**2)) if self.probs.size else 0.0


def _fill_missing(log_r: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, float]]:
    missing = log_r.isna()
    filled_fraction = {str(c): float(missing[c].mean()) for c in log_r.columns}
    if not missing.to_numpy().any():
        return log_r, filled_fraction
    proxy = log_r.mean(axis=1, skipna=True).fillna(0.0)  # market proxy per day
    filled = log_r.apply(lambda col: col.fillna(proxy))
    return filled, filled_fraction


def _regime_similarity(
    window_starts: pd.Index,
    regime_probs: pd.DataFrame,
    current_belief: Mapping[str, float] | None,
) -> np.ndarray:
    hist = regime_probs.sort_index()
    if current_belief is None:
        belief = hist.iloc[-1]
    else:
        belief = pd.Series(dict(current_belief), dtype=float).reindex(hist.columns).fillna(0.0)
    if belief.sum() <= 0 or not np.isfinite(belief.to_numpy()).all():
        raise ValueError("current regime belief must be finite with positive mass")
    belief = belief / belief.sum()
    # Regime estimate in force at each window start: last estimate on or before that date.
    pos = hist.index.searchsorted(window_starts, side="right") - 1
    values = hist.to_numpy(dtype=float)
    at_start = np.where((pos >= 0)[:, None], values[np.clip(pos, 0, None)], np.nan)
    sim = at_start @ belief.to_numpy(dtype=float)
    if np.isnan(sim).all():
        return np.ones(len(window_starts))
    sim = np.where(np.isnan(sim), np.nanmean(sim), sim)
    return np.clip(sim, 0.0, None)


def scenario_returns(
    returns: pd.DataFrame,
    horizon: int = DEFAULT_HORIZON,
    lookback: int = DEFAULT_LOOKBACK,
    weighting: str = "equal",
    regime_probs: pd.DataFrame | None = None,
    *,
    current_belief: Mapping[str, float] | None = None,
    regime_tilt: float = DEFAULT_REGIME_TILT,
    min_coverage: float = DEFAULT_MIN_COVERAGE,
) -> Scenarios:
    """Build H-session simple-return scenarios from daily log returns.

    Parameters
    ----------
    returns:
        Daily log returns, index = sessions (ascending), columns = symbols. Point in time.
    horizon:
        H, sessions per scenario window (default 5, the auction horizon).
    lookback:
        Number of most recent daily rows used (default 1260). T = lookback − H + 1 windows
        (fewer if less history is given).
    weighting:
        ``"equal"`` or ``"regime"`` (see module docstring).
    regime_probs:
        For ``"regime"``: filtered regime probabilities, index = sessions, columns = regimes
        (e.g. NORMAL / VOLATILE / CRISIS). The last row is the current belief unless
        ``current_belief`` is given.
    regime_tilt:
        Share of probability mass allocated by regime similarity (0 = equal, 1 = pure tilt).
    min_coverage:
        Minimum share of valid daily returns for a symbol to be kept.
    """
    if horizon < 1:
        raise ValueError("horizon must be >= 1")
    if lookback < horizon:
        raise ValueError("lookback must be >= horizon")
    if weighting not in ("equal", "regime"):
        raise ValueError(f"unknown weighting {weighting!r}; use 'equal' or 'regime'")
    if not 0.0 <= regime_tilt <= 1.0:
        raise ValueError("regime_tilt must be in [0, 1]")

    window = returns.sort_index().iloc[-lookback:].astype(float)
    coverage = window.notna().mean(axis=0)
    keep = coverage[coverage >= min_coverage].index
    dropped = [str(c) for c in window.columns if c not in keep]
    window = window[keep]
    log_r, filled_fraction = _fill_missing(window)

    n_days = len(log_r)
    n_windows = n_days - horizon + 1
    if n_windows < 1 or log_r.shape[1] == 0:
        return Scenarios(
            returns=np.empty((0, log_r.shape[1])),
            probs=np.empty(0),
            symbols=[str(c) for c in log_r.columns],
            end_dates=log_r.index[:0],
            horizon=horizon,
            lookback=lookback,
            weighting=weighting,
            dropped=dropped,
            filled_fraction=filled_fraction,
        )

    # Overlapping H-session sums of log returns via a cumulative sum, then to simple returns.
    arr = log_r.to_numpy()
    csum = np.vstack([np.zeros((1, arr.shape[1])), np.cumsum(arr, axis=0)])
    window_log = csum[horizon:] - csum[:-horizon]
    simple = np.expm1(window_log)
    end_dates = log_r.index[horizon - 1 :]

    if weighting == "equal":
        probs = np.full(n_windows, 1.0 / n_windows)
    else:
        if regime_probs is None or regime_probs.empty:
            raise ValueError("weighting='regime' needs regime_probs")
        # The regime at the session *before* the window's first return is what a forecaster
        # saw when the window began; for the first window fall back to its first session.
        starts_pos = np.arange(n_windows) - 1
        starts = log_r.index[np.clip(starts_pos, 0, None)]
        sim = _regime_similarity(starts, regime_probs, current_belief)
        tilt = sim / sim.sum() if sim.sum() > 0 else np.full(n_windows, 1.0 / n_windows)
        probs = (1.0 - regime_tilt) / n_windows + regime_tilt * tilt
        probs = probs / probs.sum()

    return Scenarios(
        returns=simple,
        probs=probs,
        symbols=[str(c) for c in log_r.columns],
        end_dates=end_dates,
        horizon=horizon,
        lookback=lookback,
        weighting=weighting,
        dropped=dropped,
        filled_fraction=filled_fraction,
    )
