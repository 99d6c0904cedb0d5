"""Point-in-time market features per symbol (§D inputs, §H1 liquidity inputs).

Conventions
-----------
* Input: the canonical long bars frame (``symbol, date, open, high, low, close, volume,
  adj_close, asset_class, provider``; unique ``(symbol, date)``, tz-naive midnight dates).
* Point in time: an as-of-D computation first drops every bar dated after D, so nothing it
  returns can depend on later data.
* Every symbol is measured on its *own* sessions (crypto trades weekends, stocks do not):
  "21 sessions" means the symbol's last 21 bars, and returns are between consecutive bars.
* Prices for returns, volatility, SMA and momentum are ``adj_close`` (split/dividend adjusted;
  ``close`` where ``adj_close`` is missing). Dollar volume uses the unadjusted ``close``
  (what actually traded). Returns are log returns; volatilities are daily (not annualised).

Internally the bars are laid out as a right-aligned panel: one row per symbol, column ``L-1``
is the symbol's last bar on or before D, earlier columns its earlier bars, NaN-padded on the
left for short histories. Rolling windows along a row are therefore windows over the symbol's
own sessions, and everything is a numpy reduction (500 symbols x 1300 sessions well under 1 s).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ais_pipelines.core.correlation import corr_sums, self_pairs
from ais_pipelines.core.reason_codes import ReasonCode, codes_str

REQUIRED_BAR_COLUMNS = ("symbol", "date", "open", "high", "low", "close", "volume")

FEATURE_COLUMNS = [
    "symbol",
    "asset_class",
    "as_of",
    "last_date",
    "stale_days",
    "n_sessions",
    "close",
    "ret_1d",
    "realized_vol_21d",
    "ewma_vol",
    "adv_usd_20d",
    "spread_bps_est",
    "dist_sma200",
    "momentum_12_1",
    "momentum_3m",
    "avg_corr_63d",
    "liquidity_score",
    "features_ok",
    "missing_features",
    "reason_codes",
]

# Features a forecast cannot do without; avg_corr_63d is informative only (a one-symbol
# universe has no correlation) so it does not make a symbol insufficient.
REQUIRED_FEATURES = (
    "close",
    "ret_1d",
    "realized_vol_21d",
    "ewma_vol",
    "adv_usd_20d",
    "spread_bps_est",
    "dist_sma200",
    "momentum_12_1",
    "momentum_3m",
)


@dataclass(frozen=True)
class FeatureParams:
    """Windows are counted in the symbol's own sessions."""

    vol_window: int = 21
    ewma_lambda: float = 0.94  # RiskMetrics (1996) daily decay
    ewma_min_obs: int = 21  # an EWMA over fewer returns is reported as NaN
    adv_window: int = 20
    # Corwin-Schultz two-day estimates averaged over this many pairs; 63 rather than the
    # paper's month because the daily-bar estimator is noisy (+-25 bps over 21 days).
    spread_window: int = 63
    spread_floor_bps: float = 1.0  # a round trip is never free; also absorbs negative averages
    sma_window: int = 200
    mom_long: int = 252  # 12-1 momentum: log(P[t-skip] / P[t-long])
    mom_skip: int = 21
    mom_short: int = 63  # 3-month momentum: log(P[t] / P[t-63])
    corr_window: int = 63
    corr_min_obs: int = 20  # common dates needed for a pairwise correlation to count
    # liquidity_score = w * adv_score + (1 - w) * spread_score, both log-linear in [0, 1]
    liq_adv_zero_usd: float = 1e5  # ADV at/below which adv_score = 0
    liq_adv_full_usd: float = 5e7  # ADV at/above which adv_score = 1
    liq_spread_full_bps: float = 5.0  # spread at/below which spread_score = 1
    liq_spread_zero_bps: float = 500.0  # spread at/above which spread_score = 0
    liq_adv_weight: float = 0.8  # ADV is measured well; the daily-bar spread is noisy
    # OTC markets publish no consolidated volume (yahoo FX volume is 0): for these classes a
    # missing/zero ADV scores the ADV component as full and liquidity rests on the spread.
    volume_optional_classes: tuple[str, ...] = ("FX",)
    max_stale_days: int = 7  # last bar older than this (calendar days) -> insufficient
    panel_length: int = 320  # sessions loaded per symbol; EWMA seed weight 0.94^300 ~ 1e-8

    @property
    def min_sessions(self) -> int:
        """History (bars) needed for every required feature to exist."""
        return max(
            self.mom_long + 1,
            self.mom_short + 1,
            self.sma_window,
            self.vol_window + 1,
            self.ewma_min_obs + 1,
            self.spread_window + 1,
            self.adv_window,
        )


# --------------------------------------------------------------------------------------------
# Panel layout
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Panel:
    """Right-aligned per-symbol arrays (rows = symbols, column -1 = last bar on/before as_of)."""

    symbols: np.ndarray  # (S,) object
    asset_class: np.ndarray  # (S,) object
    dates: np.ndarray  # (S, L) datetime64[ns], NaT padded
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    adj: np.ndarray  # adjusted close used for returns
    volume: np.ndarray
    n_sessions: np.ndarray  # (S,) bars on/before as_of (full history, not only L)
    as_of: pd.Timestamp

    @property
    def logp(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log(np.where(self.adj > 0, self.adj, np.nan))

    @property
    def returns(self) -> np.ndarray:
        """Daily log returns between consecutive own sessions; column j is the return into j."""
        return diff_lag(self.logp, 1)

    @property
    def last_date(self) -> np.ndarray:
        return self.dates[:, -1]


def normalize_as_of(as_of: object) -> pd.Timestamp:
    """The as-of session as a tz-naive midnight Timestamp (tz-aware input is refused)."""
    ts = pd.Timestamp(as_of)
    if ts.tzinfo is not None:
        raise ValueError("as_of must be a tz-naive session date")
    return ts.normalize().as_unit("ns")


def _validate(bars: pd.DataFrame) -> None:
    missing = [c for c in REQUIRED_BAR_COLUMNS if c not in bars.columns]
    if missing:
        raise ValueError(f"bars frame lacks columns {missing}")


@dataclass(frozen=True)
class SortedBars:
    """Bars on/before as_of sorted by (symbol, date), as flat numpy arrays."""

    codes: np.ndarray
    symbols: np.ndarray
    asset_class: np.ndarray
    dates: np.ndarray  # datetime64[ns]
    cols: dict[str, np.ndarray]


def sorted_bars(bars: pd.DataFrame, as_of: pd.Timestamp) -> SortedBars:
    _validate(bars)
    date_col = bars["date"]
    if not pd.api.types.is_datetime64_dtype(date_col.dtype):
        date_col = pd.to_datetime(date_col)
    dates_all = date_col.to_numpy(dtype="datetime64[ns]")
    keep = np.flatnonzero(dates_all <= as_of.to_datetime64())  # point in time: nothing after D
    codes_all, uniques_all = pd.factorize(bars["symbol"], sort=True)
    # symbols without a bar on/before as_of disappear; codes are renumbered densely
    present, codes = np.unique(np.asarray(codes_all)[keep], return_inverse=True)
    dates = dates_all[keep]
    order = np.lexsort((dates.view("int64"), codes))
    codes = codes[order]
    dates = dates[order]
    rows = keep[order]  # positions in the original frame
    cols: dict[str, np.ndarray] = {}
    for c in ("open", "high", "low", "close", "volume"):
        cols[c] = bars[c].to_numpy(dtype="float64", na_value=np.nan)[rows]
    if "adj_close" in bars.columns:
        adj = bars["adj_close"].to_numpy(dtype="float64", na_value=np.nan)[rows]
        cols["adj"] = np.where(np.isfinite(adj) & (adj > 0), adj, cols["close"])
    else:
        cols["adj"] = cols["close"].copy()
    n_sym = len(present)
    if "asset_class" in bars.columns and n_sym:
        last_idx = np.searchsorted(codes, np.arange(n_sym), side="right") - 1
        asset_class = bars["asset_class"].iloc[rows[last_idx]].astype(str).to_numpy(dtype=object)
    else:
        asset_class = np.full(n_sym, "", dtype=object)
    symbols = np.asarray(pd.Index(uniques_all).astype(str), dtype=object)[present]
    return SortedBars(codes, symbols, asset_class, dates, cols)


def build_panel(bars: pd.DataFrame, as_of: object, length: int, *, sorted_: SortedBars | None = None) -> Panel:
    """The last ``length`` bars on/before ``as_of`` of every symbol, right-aligned.
    ``sorted_``: ``sorted_bars(bars, as_of)`` if the caller has it (one sort for several panels)."""
    as_of_ts = normalize_as_of(as_of)
    lg = sorted_bars(bars, as_of_ts) if sorted_ is None else sorted_
    n_sym = len(lg.symbols)
    counts = np.bincount(lg.codes, minlength=n_sym) if n_sym else np.zeros(0, dtype=int)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]) if n_sym else np.zeros(0, dtype=int)
    pos = np.arange(len(lg.codes)) - starts[lg.codes] if n_sym else np.zeros(0, dtype=int)
    from_end = counts[lg.codes] - 1 - pos if n_sym else pos
    sel = from_end < length
    rows = lg.codes[sel]
    cols_idx = length - 1 - from_end[sel]

    def scatter(values: np.ndarray) -> np.ndarray:
        out = np.full((n_sym, length), np.nan)
        out[rows, cols_idx] = values[sel]
        return out

    dates = np.full((n_sym, length), np.datetime64("NaT"), dtype="datetime64[ns]")
    dates[rows, cols_idx] = lg.dates[sel]
    return Panel(
        symbols=lg.symbols,
        asset_class=lg.asset_class,
        dates=dates,
        open=scatter(lg.cols["open"]),
        high=scatter(lg.cols["high"]),
        low=scatter(lg.cols["low"]),
        close=scatter(lg.cols["close"]),
        adj=scatter(lg.cols["adj"]),
        volume=scatter(lg.cols["volume"]),
        n_sessions=counts.astype(np.int64),
        as_of=as_of_ts,
    )


# --------------------------------------------------------------------------------------------
# Array helpers (rows = symbols, along axis 1 = own sessions)
# --------------------------------------------------------------------------------------------


def lag(a: np.ndarray, k: int) -> np.ndarray:
    """``out[:, j] = a[:, j - k]`` (NaN where j - k < 0)."""
    out = np.full_like(a, np.nan, dtype="float64")
    if k < a.shape[1]:
        out[:, k:] = a[:, : a.shape[1] - k]
    return out


def diff_lag(a: np.ndarray, k: int) -> np.ndarray:
    return a - lag(a, k)


def ewma_variance(r: np.ndarray, lam: float, min_obs: int) -> np.ndarray:
    """RiskMetrics EWMA variance series, zero-mean, ``lam`` decay.

    ``var_t = sum_k lam^k r_{t-k}^2 / sum_k lam^k`` over the returns available up to t: the
    recursion ``var_t = lam var_{t-1} + (1 - lam) r_t^2`` with bias-corrected start-up (what
    ``pandas.Series.ewm(alpha=1-lam, adjust=True)`` computes). Once a few hundred returns are in,
    the start-up weight (lam^n) is below 1e-7 and it is the textbook recursion. Uses only
    returns up to t (point in time); NaN until ``min_obs`` returns exist.
    """
    from scipy.signal import lfilter  # scipy.signal costs ~2 s to import: only in the run that filters

    valid = np.isfinite(r)
    sq = np.where(valid, r * r, 0.0)
    num = lfilter([1.0], [1.0, -lam], sq, axis=1)
    den = lfilter([1.0], [1.0, -lam], valid.astype("float64"), axis=1)
    count = np.cumsum(valid, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        var = num / den
    return np.where(valid & (count >= min_obs), var, np.nan)


def rolling_window(a: np.ndarray, w: int) -> np.ndarray:
    """The last ``w`` columns (NaN-padded on the left if the panel is shorter)."""
    if a.shape[1] >= w:
        return a[:, -w:]
    pad = np.full((a.shape[0], w - a.shape[1]), np.nan)
    return np.concatenate([pad, a], axis=1)


def _full_mean(x: np.ndarray) -> np.ndarray:
    """Row mean, NaN unless every element of the window is finite."""
    ok = np.isfinite(x).all(axis=1)
    out = np.full(x.shape[0], np.nan)
    if ok.any():
        out[ok] = x[ok].mean(axis=1)
    return out


def _full_std(x: np.ndarray) -> np.ndarray:
    ok = np.isfinite(x).all(axis=1)
    out = np.full(x.shape[0], np.nan)
    if ok.any() and x.shape[1] > 1:
        out[ok] = x[ok].std(axis=1, ddof=1)
    return out


def corwin_schultz_2day(
    high0: np.ndarray, low0: np.ndarray, close0: np.ndarray, high1: np.ndarray, low1: np.ndarray
) -> np.ndarray:
    """Corwin & Schultz (2012, J. Finance 67(2), 719-760) two-day high-low spread estimate.

    beta = ln(H0/L0)^2 + ln(H1/L1)^2, gamma = ln(max(H0,H1) / min(L0,L1))^2,
    alpha = (sqrt(2 beta) - sqrt(beta)) / (3 - 2 sqrt 2) - sqrt(gamma / (3 - 2 sqrt 2)),
    S = 2 (e^alpha - 1) / (1 + e^alpha)   (a fraction of price; may be negative).

    Day-1 high/low are first shifted by the overnight move as in the paper's section III.A:
    if L1 > C0 both drop by L1 - C0, if H1 < C0 both rise by C0 - H1, so an overnight gap is
    not mistaken for spread.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        shift = np.where(low1 > close0, low1 - close0, np.where(high1 < close0, high1 - close0, 0.0))
        h1 = high1 - shift
        l1 = low1 - shift
        beta = np.log(high0 / low0) ** 2 + np.log(h1 / l1) ** 2
        gamma = np.log(np.maximum(high0, h1) / np.minimum(low0, l1)) ** 2
        k = 3.0 - 2.0 * np.sqrt(2.0)
        alpha = (np.sqrt(2.0 * beta) - np.sqrt(beta)) / k - np.sqrt(gamma / k)
        return 2.0 * (np.exp(alpha) - 1.0) / (1.0 + np.exp(alpha))


def liquidity_score(
    adv_usd: np.ndarray | float,
    spread_bps: np.ndarray | float,
    params: FeatureParams = FeatureParams(),
    adv_optional: np.ndarray | bool = False,
) -> np.ndarray:
    """Liquidity in [0, 1], non-decreasing in ADV and non-increasing in spread.

    ``adv_score = clip(ln(ADV / adv_zero) / ln(adv_full / adv_zero), 0, 1)`` ($100k -> 0,
    $50M -> 1), ``spread_score = clip(ln(spread_zero / s) / ln(spread_zero / spread_full), 0, 1)``
    (500 bps -> 0, 5 bps -> 1), ``score = 0.8 adv_score + 0.2 spread_score``.
    So: a large cap (ADV >= $50M, spread <= 50 bps) scores >= 0.9; $1M ADV scores <= 0.5 and
    needs ~$10M ADV with a tight spread to pass the 0.7 pre-trade floor. Unknown inputs score
    0 (fail closed: NaN would compare as "not below 0.7").
    """
    p = params
    adv = np.asarray(adv_usd, dtype="float64")
    spr = np.asarray(spread_bps, dtype="float64")
    with np.errstate(invalid="ignore", divide="ignore"):
        a = np.log(np.maximum(adv, 1e-300) / p.liq_adv_zero_usd) / np.log(
            p.liq_adv_full_usd / p.liq_adv_zero_usd
        )
        s = np.log(p.liq_spread_zero_bps / np.maximum(spr, 1e-300)) / np.log(
            p.liq_spread_zero_bps / p.liq_spread_full_bps
        )
    a = np.clip(a, 0.0, 1.0)
    s = np.clip(s, 0.0, 1.0)
    opt = np.asarray(adv_optional, dtype=bool)
    a = np.where(opt & ~(adv > 0), 1.0, a)
    score = p.liq_adv_weight * a + (1.0 - p.liq_adv_weight) * s
    known = np.isfinite(spr) & (np.isfinite(adv) | opt)
    return np.where(known & np.isfinite(score), score, 0.0)


def _avg_corr(panel: Panel, r: np.ndarray, window: int, min_obs: int) -> np.ndarray:
    """Mean Pearson correlation of each symbol's last ``window`` returns with every other
    symbol's returns on the common dates (pairwise complete, >= ``min_obs`` common dates)."""
    n_sym = r.shape[0]
    out = np.full(n_sym, np.nan)
    if n_sym < 2:
        return out
    rw = rolling_window(r, window)
    dw = rolling_window_dates(panel.dates, window)
    has_window = np.isfinite(rw).all(axis=1)
    if not has_window.any():
        return out
    start = dw[has_window, 0].min()
    # union-date wide matrix of every return dated on/after the earliest window start
    sel = np.isfinite(r) & (panel.dates >= start)
    rows, cols = np.nonzero(sel)
    udates, inv = np.unique(panel.dates[rows, cols], return_inverse=True)
    wide = np.full((len(udates), n_sym), np.nan)
    wide[inv, rows] = r[rows, cols]
    # Symbols with the same window dates (one calendar, current bars) share one pass: every
    # column's correlation sums against all symbols on those dates (core.correlation, O(N·T)).
    members = np.flatnonzero(has_window)
    keys = dw[members].view(np.int64)
    _, group_of = np.unique(keys, axis=0, return_inverse=True)
    for g in range(int(group_of.max()) + 1):
        own = members[group_of.ravel() == g]
        x = wide[np.searchsorted(udates, dw[own[0]])]  # (window, S) on these symbols' dates
        sums, counts = corr_sums(x[:, own], x, min_obs)
        self_ok = self_pairs(x[:, own], min_obs)
        n = counts - self_ok
        with np.errstate(invalid="ignore", divide="ignore"):
            out[own] = np.where(n > 0, (sums - self_ok) / n, np.nan)
    return out


def rolling_window_dates(d: np.ndarray, w: int) -> np.ndarray:
    if d.shape[1] >= w:
        return d[:, -w:]
    pad = np.full((d.shape[0], w - d.shape[1]), np.datetime64("NaT"), dtype="datetime64[ns]")
    return np.concatenate([pad, d], axis=1)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def compute_market_features(
    bars: pd.DataFrame, as_of: object, params: FeatureParams = FeatureParams()
) -> pd.DataFrame:
    """One row per symbol with a bar on/before ``as_of`` (columns ``FEATURE_COLUMNS``).

    * ``close``: last unadjusted close; ``ret_1d``: last daily log return.
    * ``realized_vol_21d``: sample std (ddof 1) of the last 21 daily log returns.
    * ``ewma_vol``: sqrt of the RiskMetrics EWMA variance (lambda 0.94) at the last bar.
    * ``adv_usd_20d``: mean of close x volume over the last 20 bars.
    * ``spread_bps_est``: Corwin-Schultz (2012) two-day estimates averaged over the last
      ``spread_window`` pairs (negative two-day values kept in the average: zeroing them first
      biases liquid names up by tens of bps), in bps, floored at ``spread_floor_bps``.
    * ``dist_sma200``: adj close / mean(last 200 adj closes) - 1.
    * ``momentum_12_1``: log(P[t-21] / P[t-252]); ``momentum_3m``: log(P[t] / P[t-63]).
    * ``avg_corr_63d``: mean correlation of the last 63 daily returns to each other symbol's
      returns on the common dates (>= 20 of them); NaN in a one-symbol universe.
    * ``liquidity_score``: see ``liquidity_score``.
    * ``features_ok`` False with reason ``INSUFFICIENT_FEATURES`` when any required feature is
      missing (history shorter than ``params.min_sessions``) or the last bar is stale;
      ``missing_features`` names them.
    """
    p = params
    as_of_ts = normalize_as_of(as_of)
    length = max(p.panel_length, p.min_sessions + 1)
    panel = build_panel(bars, as_of_ts, length)
    n_sym = len(panel.symbols)
    if n_sym == 0:
        return pd.DataFrame({c: pd.Series(dtype="float64") for c in FEATURE_COLUMNS})

    logp = panel.logp
    r = diff_lag(logp, 1)
    ewma_var = ewma_variance(r, p.ewma_lambda, p.ewma_min_obs)

    # Corwin-Schultz on adjusted high/low so a split between the two days is no spread.
    adj_factor = panel.adj / panel.close
    hi, lo, cl = panel.high * adj_factor, panel.low * adj_factor, panel.adj
    w = p.spread_window
    cs = corwin_schultz_2day(
        rolling_window(lag(hi, 1), w),
        rolling_window(lag(lo, 1), w),
        rolling_window(lag(cl, 1), w),
        rolling_window(hi, w),
        rolling_window(lo, w),
    )
    cs_mean_bps = _full_mean(cs) * 1e4
    spread_bps = np.where(np.isfinite(cs_mean_bps), np.maximum(cs_mean_bps, p.spread_floor_bps), np.nan)

    dollar_vol = panel.close * panel.volume
    adv = _full_mean(rolling_window(dollar_vol, p.adv_window))
    sma = _full_mean(rolling_window(panel.adj, p.sma_window))
    last_adj = panel.adj[:, -1]
    adv_optional = np.isin(panel.asset_class.astype(str), list(p.volume_optional_classes))

    last_date = pd.DatetimeIndex(panel.last_date)
    stale_days = (as_of_ts - last_date).days.to_numpy()
    out = pd.DataFrame(
        {
            "symbol": pd.array(panel.symbols.astype(str), dtype="string"),
            "asset_class": pd.array(panel.asset_class.astype(str), dtype="string"),
            "as_of": pd.DatetimeIndex(np.full(n_sym, as_of_ts.to_datetime64())),
            "last_date": last_date,
            "stale_days": stale_days.astype("int64"),
            "n_sessions": panel.n_sessions,
            "close": panel.close[:, -1],
            "ret_1d": r[:, -1],
            "realized_vol_21d": _full_std(rolling_window(r, p.vol_window)),
            "ewma_vol": np.sqrt(ewma_var[:, -1]),
            "adv_usd_20d": adv,
            "spread_bps_est": spread_bps,
            "dist_sma200": last_adj / sma - 1.0,
            "momentum_12_1": lag(logp, p.mom_skip)[:, -1] - lag(logp, p.mom_long)[:, -1],
            "momentum_3m": logp[:, -1] - lag(logp, p.mom_short)[:, -1],
            "avg_corr_63d": _avg_corr(panel, r, p.corr_window, p.corr_min_obs),
        }
    )
    adv_for_score = np.where(adv_optional & ~(adv > 0), np.nan, adv)
    out["liquidity_score"] = liquidity_score(adv_for_score, spread_bps, p, adv_optional)

    missing = pd.DataFrame({c: ~np.isfinite(out[c].to_numpy(dtype="float64")) for c in REQUIRED_FEATURES})
    # ADV is not required where the market publishes no volume (OTC FX)
    missing["adv_usd_20d"] &= ~adv_optional
    missing["stale_data"] = stale_days > p.max_stale_days
    names = np.array(missing.columns, dtype=object)
    flags = missing.to_numpy()
    out["features_ok"] = ~flags.any(axis=1)
    out["missing_features"] = pd.array([",".join(names[row]) for row in flags], dtype="string")
    out["reason_codes"] = pd.array(
        ["" if ok else codes_str([ReasonCode.INSUFFICIENT_FEATURES]) for ok in out["features_ok"]],
        dtype="string",
    )
    return out[FEATURE_COLUMNS]


def returns_matrix(bars: pd.DataFrame, as_of: object, lookback: int) -> pd.DataFrame:
    """Daily log returns as a dates x symbols frame, point in time.

    Each symbol's return is between its own consecutive bars (a stock's Monday return spans the
    weekend; a crypto Monday return is Sunday->Monday). Rows are the last ``lookback`` dates of
    the union of all symbols' sessions on/before ``as_of``; NaN where a symbol has no session
    (or no previous bar) on that date.
    """
    as_of_ts = normalize_as_of(as_of)
    lg = sorted_bars(bars, as_of_ts)
    if len(lg.codes) == 0 or lookback <= 0:
        return pd.DataFrame(index=pd.DatetimeIndex([], name="date"))
    with np.errstate(divide="ignore", invalid="ignore"):
        logp = np.log(np.where(lg.cols["adj"] > 0, lg.cols["adj"], np.nan))
    ret = np.full(len(logp), np.nan)
    same = lg.codes[1:] == lg.codes[:-1]
    ret[1:] = np.where(same, logp[1:] - logp[:-1], np.nan)
    udates = np.unique(lg.dates)[-lookback:]
    keep = lg.dates >= udates[0]
    rows = np.searchsorted(udates, lg.dates[keep])
    wide = np.full((len(udates), len(lg.symbols)), np.nan)
    wide[rows, lg.codes[keep]] = ret[keep]
    return pd.DataFrame(
        wide,
        index=pd.DatetimeIndex(udates, name="date"),
        columns=pd.Index(lg.symbols.astype(str), name="symbol"),
    )


def forward_returns(
    bars: pd.DataFrame, as_of: object, horizon: int, last_n: int | None = None, simple: bool = True
) -> pd.DataFrame:
    """Realised H-session returns ``P[t+H] / P[t] - 1`` (``simple``) or ``log(P[t+H] / P[t])``
    over the symbol's own sessions, for the dates t whose t+H bar is on/before ``as_of`` only,
    so an as-of-D evaluation of past forecasts never peeks. ``last_n`` keeps each symbol's
    most recent n such dates. Columns: symbol, date, fwd_ret.
    """
    as_of_ts = normalize_as_of(as_of)
    lg = sorted_bars(bars, as_of_ts)
    n = len(lg.codes)
    if n <= horizon:
        return pd.DataFrame(
            {
                "symbol": pd.Series(dtype="string"),
                "date": pd.Series(dtype="datetime64[ns]"),
                "fwd_ret": pd.Series(dtype="float64"),
            }
        )
    with np.errstate(divide="ignore", invalid="ignore"):
        logp = np.log(np.where(lg.cols["adj"] > 0, lg.cols["adj"], np.nan))
    same = lg.codes[horizon:] == lg.codes[:-horizon]
    idx = np.flatnonzero(same)
    fwd = logp[idx + horizon] - logp[idx]
    if simple:
        fwd = np.expm1(fwd)
    codes = lg.codes[idx]
    if last_n is not None:
        counts = np.bincount(codes, minlength=len(lg.symbols))
        ends = np.cumsum(counts)
        rank_from_end = ends[codes] - 1 - np.arange(len(codes))
        keep = rank_from_end < last_n
        idx, fwd, codes = idx[keep], fwd[keep], codes[keep]
    return pd.DataFrame(
        {
            "symbol": pd.array(lg.symbols[codes].astype(str), dtype="string"),
            "date": lg.dates[idx],
            "fwd_ret": fwd,
        }
    )


def lag1_autocorr_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lag-1 sample autocorrelation per row (the ``statsmodels.tsa.acf`` estimator:
    sum (x_t - m)(x_{t-1} - m) / sum (x_t - m)^2), using each row's finite values as one
    contiguous series. Returns (rho, n)."""
    fin = np.isfinite(x)
    n = fin.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        m = np.where(fin, x, 0.0).sum(axis=1) / n
        d = np.where(fin, x - m[:, None], np.nan)
        num = np.nansum(d[:, 1:] * d[:, :-1], axis=1)
        den = np.nansum(d * d, axis=1)
        rho = num / den
    rho = np.where((n >= 3) & (den > 0), rho, np.nan)
    return rho, n


def symbols_of(bars: pd.DataFrame, as_of: object, *, sorted_: SortedBars | None = None) -> Sequence[str]:
    """Sorted symbols with at least one bar on/before ``as_of``."""
    lg = sorted_bars(bars, normalize_as_of(as_of)) if sorted_ is None else sorted_
    return [str(s) for s in lg.symbols]


def session_aligned_log_returns(
    bars: pd.DataFrame, as_of: object, lookback: int, calendar: str = "XNYS"
) -> pd.DataFrame:
    """Daily log returns of every symbol on one decision calendar (point in time).

    Portfolio risk needs one time axis: crypto trades on weekends and FX on some exchange
    holidays, so each symbol's adjusted close is read as of each session of ``calendar``
    (its last price on or before the session). A weekend move of crypto therefore lands in
    Monday's return, as it does for the book. Sessions before a symbol's first bar stay NaN.
    """
    from ais_pipelines.core.calendars import sessions_between

    as_of_ts = normalize_as_of(as_of)
    b = bars[bars["date"] <= as_of_ts]
    if b.empty:
        return pd.DataFrame()
    closes = b.pivot_table(index="date", columns="symbol", values="adj_close", aggfunc="last").sort_index()
    sessions = sessions_between(calendar, closes.index.min(), as_of_ts)
    # Union then forward-fill: a session takes each symbol's latest close on or before it.
    grid = closes.reindex(closes.index.union(sessions)).ffill().reindex(sessions)
    rets = np.log(grid).diff().iloc[1:]
    return rets.iloc[-lookback:]
