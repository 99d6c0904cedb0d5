"""Data-quality flags, score and gates per symbol (§B3–§B5).

Every symbol seen in the canonical bars or in the rejects gets one row of the data-quality
table for an as-of session D. Only data dated on or before D is looked at, so a backfill
reproduces exactly what the system knew on D.

**Window.** A symbol's window runs from its first valid bar to D, counted in sessions of the
symbol's exchange calendar (``expected_sessions``), and spans at most the last
``window_sessions`` sessions (``fetch_sessions`` in ``policies/quality.yaml``; ``None`` = the
whole stored history). Rejects dated before the window start are not counted (they stay in
``bar_rejects``); a symbol without any valid bar starts at its first dated reject. A late
listing therefore has a short history, not missing data; a feed that stops early has its tail
counted as missing.

**Counts.** ``valid_sessions``: sessions in the window with a valid bar; ``observed_sessions``:
sessions for which the feed delivered any row (valid or rejected; reject dates are read from
their ``YYYY-MM-DD`` prefix); ``rejected_rows``: rejects of the symbol dated on or before D
(undatable rejects included).

**Flags** (counts per symbol; each also has a ``<flag>_rate = count / expected_sessions``,
clipped to [0, 1]):

=====================  ====================================================================
missing_sessions       expected sessions without a valid bar (rejected rows leave gaps too)
duplicate_dates        rows rejected as DUPLICATE_ROW or CONFLICTING_DUPLICATE
non_positive_prices    rows rejected as NON_POSITIVE_PRICE
ohlc_inconsistent      rows rejected as OHLC_INCONSISTENT
return_spikes          sessions whose adj_close log return is further than ``spike_sigma``
                       robust σ (1.4826 · MAD) from the symbol's median return; sessions
                       counted as split-like jumps are not counted again here
volume_spikes          the same test on log(1 + volume)
stale_prices           in a run of ≥ ``stale_min_run`` identical consecutive closes, every
                       session after the first
split_like_jumps       unadjusted splits: a move of the adjusted series (the close where the
                       file has no adj_close) matching a standard split ratio within
                       ``split_tolerance``, corroborated by the volume level
                       (``core/corporate_actions.py``); any one makes the symbol INVALID_DATA
                       with ``UNADJUSTED_SPLIT``, whatever the score
=====================  ====================================================================

**Events** (:func:`assess`): every flag is also a dated event — symbol, session, flag, reason
code, value, detail — stored per as-of in table ``quality_flags``: each missing session, spike,
stale session, unadjusted split, reject (duplicate, non-positive price, OHLC, negative volume),
plus events that are not score terms: ``split_adjusted`` / ``dividend_adjusted`` (adj_close
absorbs a split or reveals a distribution; the adjusted series is used) and ``zero_bars``
(volume 0 with open = high = low = close). Their codes join ``reason_codes``.

Spikes need at least ``spike_min_obs`` returns (a robust σ from a handful of points is noise);
where the MAD degenerates (0 up to float noise, i.e. over half the values are equal) the
standard deviation is used instead, and a σ of 0 flags nothing.

**Score.** ``data_quality_score = clip(1 − Σ_flag weight_flag · rate_flag, 0, 1)`` (rounded to
1e-10 so that replays compare byte for byte). Default weights, see ``QualityParams``:

=====================  ======
missing_sessions       1.0
duplicate_dates        1.0
non_positive_prices    2.0
ohlc_inconsistent      1.0
return_spikes          2.0
volume_spikes          0.5
stale_prices           1.0
split_like_jumps       5.0
=====================  ======

A symbol without a single valid bar scores 0.

**Gates**, in precedence order: ``INVALID_DATA`` when the score is below ``invalid_below``
(0.6: stored and shown, never traded) or the window holds an unadjusted split; else ``INSUFFICIENT_HISTORY`` when the symbol has fewer
than ``min_valid_sessions`` (1260, ~5 years) valid sessions; else ``VALID``. ``reason_codes``
lists the code of every flag present and of every gate that failed (both gates when both
fail), or ``DATA_VALID``; ``tradable`` is true only for VALID. Per-symbol problems exclude the
symbol; they never halt the system.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from typing import Any

import numpy as np
import pandas as pd

from ais_pipelines.core.asset_classes import AssetClass, classify_symbol
from ais_pipelines.core.calendars import calendar_name, last_n_sessions, sessions_between
from ais_pipelines.core.corporate_actions import CorporateActionParams, detect_corporate_actions
from ais_pipelines.core.reason_codes import ReasonCode, codes_str

FLAGS: tuple[str, ...] = (
    "missing_sessions",
    "duplicate_dates",
    "non_positive_prices",
    "ohlc_inconsistent",
    "return_spikes",
    "volume_spikes",
    "stale_prices",
    "split_like_jumps",
)
FLAG_CODES: dict[str, ReasonCode] = {
    "missing_sessions": ReasonCode.MISSING_SESSIONS,
    "duplicate_dates": ReasonCode.DUPLICATE_DATES,
    "non_positive_prices": ReasonCode.NON_POSITIVE_PRICE,
    "ohlc_inconsistent": ReasonCode.OHLC_INCONSISTENT,
    "return_spikes": ReasonCode.RETURN_SPIKE,
    "volume_spikes": ReasonCode.VOLUME_SPIKE,
    "stale_prices": ReasonCode.STALE_PRICE,
    "split_like_jumps": ReasonCode.SPLIT_LIKE_JUMP,
}
# Flags counted from the rejects table, by the reject codes that feed them.
_REJECT_FLAGS: dict[str, tuple[str, ...]] = {
    "duplicate_dates": (ReasonCode.DUPLICATE_ROW, ReasonCode.CONFLICTING_DUPLICATE),
    "non_positive_prices": (ReasonCode.NON_POSITIVE_PRICE,),
    "ohlc_inconsistent": (ReasonCode.OHLC_INCONSISTENT,),
}
DEFAULT_WEIGHTS: dict[str, float] = {
    "missing_sessions": 1.0,
    "duplicate_dates": 1.0,
    "non_positive_prices": 2.0,
    "ohlc_inconsistent": 1.0,
    "return_spikes": 2.0,
    "volume_spikes": 0.5,
    "stale_prices": 1.0,
    "split_like_jumps": 5.0,
}
_DEGENERATE_SIGMA = 1e-12  # far below any real log-price or log-volume move: float noise

# Flags that are events only (dated rows of the quality_flags table and reason codes), not
# score terms: informational corporate actions, and bars already counted elsewhere.
EVENT_ONLY_CODES: dict[str, ReasonCode] = {
    "SPLIT_ADJUSTED": ReasonCode.SPLIT_ADJUSTED,
    "DIVIDEND_ADJUSTED": ReasonCode.DIVIDEND_ADJUSTED,
    "ZERO_BAR": ReasonCode.ZERO_BAR,
    "NEGATIVE_VOLUME": ReasonCode.NEGATIVE_VOLUME,
}


class DataStatus(StrEnum):
    VALID = "VALID"
    INVALID_DATA = "INVALID_DATA"
    INSUFFICIENT_HISTORY = "INSUFFICIENT_HISTORY"


QUALITY_COLUMNS: list[str] = [
    "as_of",
    "symbol",
    "asset_class",
    "calendar",
    "first_date",
    "last_date",
    "expected_sessions",
    "observed_sessions",
    "valid_sessions",
    "rejected_rows",
    *FLAGS,
    *(f"{f}_rate" for f in FLAGS),
    "data_quality_score",
    "status",
    "reason_codes",
    "tradable",
]


@dataclass(frozen=True)
class QualityParams:
    """Thresholds and weights of the data-quality score (declared in ``policies/``).

    Why the default weights (a weight of w means a flag present on 1/w of the window's
    sessions alone drives the score to 0; 0.4/w of them crosses the 0.6 INVALID line):

    * ``missing_sessions`` 1.0 — the baseline: a session without a usable bar is plainly
      missing information; 40 % of the window missing makes the symbol invalid.
    * ``duplicate_dates`` 1.0 — a feed that repeats or contradicts itself is as unreliable as
      one with gaps (conflicting rows also leave a gap, so they count twice).
    * ``non_positive_prices`` 2.0 — a price ≤ 0 is physically impossible for these assets: a
      corrupt feed, not market behaviour, so it costs double.
    * ``ohlc_inconsistent`` 1.0 — usually a bad tick in one field; the close may still be fine,
      so no more than a gap.
    * ``return_spikes`` 2.0 — 6σ moves are genuinely rare, so when many show up they are bad
      ticks, and every return feature, forecast and CVaR scenario inherits them.
    * ``volume_spikes`` 0.5 — volume is naturally heavy-tailed (index rebalances, earnings) and
      only feeds liquidity estimates, so it weighs least.
    * ``stale_prices`` 1.0 — a frozen price hides risk (zero returns understate σ and CVaR) but
      also happens legitimately in thin markets.
    * ``split_like_jumps`` 5.0 — one unadjusted split corrupts every return-based statistic
      across it; split-like jumps should be near-absent in adjusted data, so any frequency
      of them is punished hardest.
    """

    spike_sigma: float = 6.0
    spike_min_obs: int = 20
    stale_min_run: int = 3
    corporate_actions: CorporateActionParams = field(default_factory=CorporateActionParams)
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    invalid_below: float = 0.6
    min_valid_sessions: int = 1260
    window_sessions: int | None = None  # None: the whole stored history is assessed

    def __post_init__(self) -> None:
        unknown = set(self.weights) - set(FLAGS)
        missing = set(FLAGS) - set(self.weights)
        if unknown or missing:
            raise ValueError(
                f"quality weights: unknown flags {sorted(unknown)}, missing flags {sorted(missing)}"
            )
        if any(w < 0 for w in self.weights.values()):
            raise ValueError("quality weights must be >= 0")
        if self.spike_sigma <= 0 or self.stale_min_run < 2 or not 0 <= self.invalid_below <= 1:
            raise ValueError("spike_sigma > 0, stale_min_run >= 2 and 0 <= invalid_below <= 1 are required")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> QualityParams:
        """Build from policy data; weights not given keep their defaults."""
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown quality parameters: {sorted(unknown)}")
        kwargs = dict(data)
        if "weights" in kwargs:
            kwargs["weights"] = {
                **DEFAULT_WEIGHTS,
                **{str(k): float(v) for k, v in kwargs["weights"].items()},
            }
        if "corporate_actions" in kwargs and isinstance(kwargs["corporate_actions"], Mapping):
            ca = dict(kwargs["corporate_actions"])
            if "split_ratios" in ca:
                ca["split_ratios"] = tuple(str(r) for r in ca["split_ratios"])
            kwargs["corporate_actions"] = CorporateActionParams(**ca)
        return cls(**kwargs)


EVENT_COLUMNS: list[str] = ["symbol", "session", "flag", "reason_code", "value", "detail"]


@dataclass(frozen=True)
class QualityAssessment:
    """The per-symbol table and its dated evidence: one row per flag event (``EVENT_COLUMNS``),
    i.e. which session was missing, spiked, stale, split, … (the ``quality_flags`` table)."""

    table: pd.DataFrame
    events: pd.DataFrame


def _in_sorted(values: np.ndarray, sorted_ref: np.ndarray) -> np.ndarray:
    """``np.isin(values, sorted_ref)`` for a sorted reference: a binary search, no sort of ``values``."""
    if len(sorted_ref) == 0:
        return np.zeros(len(values), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_ref, values), len(sorted_ref) - 1)
    return sorted_ref[pos] == values


def assess(
    bars: pd.DataFrame,
    rejects: pd.DataFrame,
    as_of: date | pd.Timestamp,
    params: QualityParams | None = None,
    calendars: Mapping[str, str] | None = None,
    asset_classes: Mapping[str, AssetClass] | None = None,
) -> QualityAssessment:
    """The quality table (see :func:`assess_quality`) and the dated flag events behind it."""
    params = params or QualityParams()
    calendars = calendars or {}
    asset_classes = asset_classes or {}
    as_of_ts = pd.Timestamp(as_of).normalize().as_unit("ns")

    rj = _dated_rejects(rejects, as_of_ts)
    if bars is None or len(bars) == 0:
        # An empty frame may come without columns (nothing ingested): use a typed empty one.
        bars = pd.DataFrame(
            {
                "symbol": pd.Series([], dtype=str),
                "date": pd.Series([], dtype="datetime64[ns]"),
                **{c: pd.Series([], dtype="float64") for c in ("open", "high", "low", "close", "adj_close", "volume")},
                "asset_class": pd.Series([], dtype=str),
            }
        )
    in_window = (bars["date"] <= as_of_ts).to_numpy()
    # Factorize once (fast on arrow strings) and work on integer symbol codes from here on:
    # grouping on ints is several times faster than on strings.
    raw_code, raw_uniques = pd.factorize(bars["symbol"].astype(str))
    raw_code = raw_code[in_window]
    bar_symbols = [str(x) for x in raw_uniques[np.unique(raw_code)]] if len(raw_code) else []
    symbols = sorted(set(bar_symbols) | set(rj["symbol"].unique().tolist()))
    out = pd.DataFrame({"symbol": pd.Series(symbols, dtype=str)})
    if not symbols:
        return QualityAssessment(_typed(out.reindex(columns=QUALITY_COLUMNS)), empty_events())
    n_sym = len(symbols)
    sym_index = pd.Index(symbols)

    b = bars.loc[in_window, ["date", "open", "high", "low", "close", "adj_close", "volume", "asset_class"]].reset_index(
        drop=True)
    b_code = sym_index.get_indexer(raw_uniques)[raw_code] if len(raw_code) else np.array([], dtype=np.intp)
    d_int = b["date"].to_numpy(dtype="datetime64[ns]").view("int64")
    dc, dd = np.diff(b_code), np.diff(d_int)
    if not ((dc > 0) | ((dc == 0) & (dd > 0))).all():
        order = np.lexsort((d_int, b_code))
        b = b.iloc[order].reset_index(drop=True)
        b_code = b_code[order]
    b_date = b["date"].to_numpy(dtype="datetime64[ns]")
    rj_code = sym_index.get_indexer(rj["symbol"].to_numpy(dtype=object))
    rj_day = rj["day"].to_numpy(dtype="datetime64[ns]")

    # Class and calendar per symbol: as stored with the bars, else declared, else classified.
    first_row = np.flatnonzero(np.r_[True, b_code[1:] != b_code[:-1]]) if len(b_code) else np.array([], int)
    cls_from_bars = dict(
        zip(b_code[first_row].tolist(), b["asset_class"].iloc[first_row].tolist(), strict=True)
    )
    classes = [
        str(cls_from_bars.get(i) or AssetClass(asset_classes.get(s) or classify_symbol(s)))
        for i, s in enumerate(symbols)
    ]
    out["asset_class"] = classes
    out["calendar"] = [calendar_name(c, calendars.get(s)) for s, c in zip(symbols, classes, strict=True)]
    sym_cal = out["calendar"].to_numpy(dtype=object)

    # --- window: [first valid bar, D], at most the last window_sessions sessions -------------
    # Everything valid is stored; the gates judge the recent window only. The window starts at
    # the first valid bar: a reject older than that (or outside the window) adds no missing
    # sessions (it is still in bar_rejects, with its reason code).
    lo = np.full(n_sym, np.iinfo(np.int64).min, dtype=np.int64)
    if params.window_sessions:
        for cal in sorted(set(sym_cal.tolist())):
            start = last_n_sessions(cal, as_of_ts, params.window_sessions)[0]
            lo[sym_cal == cal] = pd.Timestamp(start).as_unit("ns").value
    in_win = b_date.view("int64") >= lo[b_code]
    if not in_win.all():
        b, b_code, b_date = b.loc[in_win].reset_index(drop=True), b_code[in_win], b_date[in_win]
    first_valid = np.full(n_sym, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first_valid, b_code, b_date.view("int64"))
    dated = ~np.isnat(rj_day)
    # A symbol without any valid bar keeps its rejects of the window (they are its only evidence).
    start_of = np.where(first_valid != np.iinfo(np.int64).max, first_valid, lo)
    rj_keep = ~dated | (rj_day.view("int64") >= start_of[rj_code])
    rj = rj.loc[rj_keep].reset_index(drop=True)
    rj_code, rj_day, dated = rj_code[rj_keep], rj_day[rj_keep], dated[rj_keep]

    # --- session counts -------------------------------------------------------------------
    obs = pd.DataFrame(
        {"code": np.r_[b_code, rj_code[dated]], "date": np.r_[b_date, rj_day[dated]]}
    ).drop_duplicates()
    # Window start: the first valid bar; a symbol with none starts at its first dated reject.
    first = pd.Series(b_date).groupby(b_code).min().reindex(range(n_sym))
    first = first.fillna(obs.groupby("code")["date"].min().reindex(range(n_sym)))
    out["first_date"] = first.to_numpy()
    out["last_date"] = pd.Series(b_date).groupby(b_code).max().reindex(range(n_sym)).to_numpy()
    expected = np.zeros(n_sym, dtype=np.int64)
    obs_code = obs["code"].to_numpy()
    obs_is_session = np.zeros(len(obs), dtype=bool)
    b_is_session = np.zeros(len(b_code), dtype=bool)
    cal_sessions: dict[str, np.ndarray] = {}
    for cal in sorted(set(sym_cal.tolist())):
        in_cal = (sym_cal == cal) & first.notna().to_numpy()
        if not in_cal.any() or first[in_cal].min() > as_of_ts:
            continue
        sessions = sessions_between(cal, first[in_cal].min(), as_of_ts).to_numpy(dtype="datetime64[ns]")
        cal_sessions[cal] = sessions
        pos = np.searchsorted(sessions, first[in_cal].to_numpy(dtype="datetime64[ns]"), side="left")
        expected[in_cal] = len(sessions) - pos
        rows = in_cal[obs_code]
        obs_is_session[rows] = _in_sorted(obs["date"].to_numpy()[rows], sessions)
        rows = in_cal[b_code]
        b_is_session[rows] = _in_sorted(b_date[rows], sessions)
    out["expected_sessions"] = expected
    out["observed_sessions"] = np.bincount(obs_code[obs_is_session], minlength=n_sym)
    out["valid_sessions"] = np.bincount(b_code[b_is_session], minlength=n_sym)
    out["rejected_rows"] = np.bincount(rj_code, minlength=n_sym)

    # --- flags ----------------------------------------------------------------------------
    out["missing_sessions"] = np.clip(expected - out["valid_sessions"].to_numpy(), 0, None)
    rj_codes_text = rj["reason_code"].to_numpy(dtype=object)
    for flag, codes in _REJECT_FLAGS.items():
        hit = np.isin(rj_codes_text, [str(c) for c in codes])
        out[flag] = np.bincount(rj_code[hit], minlength=n_sym)
    series_flags, ca_events = _series_flags(b, b_code, params)
    for flag, mask in series_flags.items():
        if flag in FLAGS:
            out[flag] = np.bincount(b_code[mask], minlength=n_sym)
    unadjusted = out["split_like_jumps"].to_numpy() > 0

    # --- rates, score, gates --------------------------------------------------------------
    exp = out["expected_sessions"].to_numpy(dtype=float)
    penalty = np.zeros(len(out))
    for flag in FLAGS:
        cnt = out[flag].to_numpy(dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            rate = np.where(exp > 0, cnt / exp, np.where(cnt > 0, 1.0, 0.0))
        if flag == "missing_sessions":
            rate = np.where(exp > 0, rate, 1.0)  # no dated observation at all: everything is missing
        rate = np.clip(rate, 0.0, 1.0)
        out[f"{flag}_rate"] = rate
        penalty += params.weights[flag] * rate
    score = np.round(np.clip(1.0 - penalty, 0.0, 1.0), 10)
    score = np.where(out["valid_sessions"].to_numpy() > 0, score, 0.0)
    out["data_quality_score"] = score

    # An unadjusted split makes every return across it wrong by the split factor: invalid
    # whatever the score, until adjusted data arrives.
    invalid = (score < params.invalid_below) | unadjusted
    short = out["valid_sessions"].to_numpy() < params.min_valid_sessions
    out["status"] = np.where(
        invalid,
        str(DataStatus.INVALID_DATA),
        np.where(short, str(DataStatus.INSUFFICIENT_HISTORY), str(DataStatus.VALID)),
    )
    events = _events(symbols, b, b_code, rj, rj_code, series_flags, ca_events, expected,
                     out["missing_sessions"].to_numpy(), sym_cal, cal_sessions)
    flag_present = {flag: out[flag].to_numpy() > 0 for flag in FLAGS}
    event_codes = events.groupby("symbol")["reason_code"].agg(lambda c: set(c)).to_dict() if len(events) else {}
    extra = {str(c) for c in EVENT_ONLY_CODES.values()}
    reason_codes = []
    for i in range(len(out)):
        codes: list[ReasonCode | str] = [FLAG_CODES[f] for f in FLAGS if flag_present[f][i]]
        codes += sorted(event_codes.get(symbols[i], set()) & extra)
        if unadjusted[i]:
            codes.append(ReasonCode.UNADJUSTED_SPLIT)
        if invalid[i]:
            codes.append(ReasonCode.INVALID_DATA)
        if short[i]:
            codes.append(ReasonCode.INSUFFICIENT_HISTORY)
        if not invalid[i] and not short[i]:
            codes.append(ReasonCode.DATA_VALID)
        reason_codes.append(codes_str(codes))
    out["reason_codes"] = reason_codes
    out["tradable"] = out["status"] == str(DataStatus.VALID)
    out["as_of"] = as_of_ts
    return QualityAssessment(table=_typed(out[QUALITY_COLUMNS]), events=events)


def assess_quality(
    bars: pd.DataFrame,
    rejects: pd.DataFrame,
    as_of: date | pd.Timestamp,
    params: QualityParams | None = None,
    calendars: Mapping[str, str] | None = None,
    asset_classes: Mapping[str, AssetClass] | None = None,
) -> pd.DataFrame:
    """One data-quality row per symbol (columns ``QUALITY_COLUMNS``), sorted by symbol.

    ``bars`` are canonical bars, ``rejects`` the rejects of normalization. ``calendars``
    overrides the calendar per symbol; ``asset_classes`` classifies symbols that appear only
    in the rejects (else the deterministic classifier). See :func:`assess` for the dated events.
    """
    return assess(bars, rejects, as_of, params, calendars, asset_classes).table


def unavailable_quality_rows(
    symbols: list[str],
    as_of: date | pd.Timestamp,
    *,
    asset_classes: Mapping[str, AssetClass],
    calendars: Mapping[str, str] | None = None,
    reason_codes: Mapping[str, ReasonCode | str] | None = None,
    params: QualityParams | None = None,
) -> pd.DataFrame:
    """Quality rows for symbols that delivered nothing at all (provider failed or was empty).

    Same convention as ``assess_quality`` for a symbol without a dated observation: nothing
    expected can be counted, everything is missing (rate 1), score 0, INVALID_DATA. The extra
    code per symbol (e.g. PROVIDER_REJECTED) is added to ``reason_codes`` so that a symbol is
    never silently absent from the table.
    """
    params = params or QualityParams()
    calendars = calendars or {}
    reason_codes = reason_codes or {}
    as_of_ts = pd.Timestamp(as_of).normalize().as_unit("ns")
    rows = []
    for s in sorted(symbols):
        cls = str(AssetClass(asset_classes.get(s) or classify_symbol(s)))
        codes: list[ReasonCode | str] = [ReasonCode.MISSING_SESSIONS, ReasonCode.INVALID_DATA]
        if params.min_valid_sessions > 0:
            codes.append(ReasonCode.INSUFFICIENT_HISTORY)
        if s in reason_codes:
            codes.append(reason_codes[s])
        row: dict[str, Any] = {f: 0 for f in FLAGS}
        row.update({f"{f}_rate": 0.0 for f in FLAGS})
        row.update(
            as_of=as_of_ts,
            symbol=s,
            asset_class=cls,
            calendar=calendar_name(cls, calendars.get(s)),
            first_date=pd.NaT,
            last_date=pd.NaT,
            expected_sessions=0,
            observed_sessions=0,
            valid_sessions=0,
            rejected_rows=0,
            missing_sessions_rate=1.0,
            data_quality_score=0.0,
            status=str(DataStatus.INVALID_DATA),
            reason_codes=";".join(sorted({str(c) for c in codes})),
            tradable=False,
        )
        rows.append(row)
    return _typed(pd.DataFrame(rows, columns=QUALITY_COLUMNS))


# --- helpers ------------------------------------------------------------------------------


def _dated_rejects(rejects: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    """Rejects with a best-effort session day (from the ISO date prefix), none after ``as_of``.

    Reject dates are kept as delivered; only their ``YYYY-MM-DD`` prefix is trusted here.
    Undatable rejects are kept: they cannot be placed in time, but they are still evidence.
    """
    if rejects is None or len(rejects) == 0:
        return pd.DataFrame(
            {
                "symbol": pd.Series([], dtype=str),
                "reason_code": pd.Series([], dtype=str),
                "detail": pd.Series([], dtype=str),
                "day": pd.Series([], dtype="datetime64[ns]"),
            }
        )
    # Rejects without a symbol (e.g. an unreadable file) cannot be attributed to one.
    named = rejects["symbol"].notna() & (rejects["symbol"].astype(str).str.strip() != "")
    r = rejects.loc[named].reindex(columns=["symbol", "date", "reason_code", "detail"]).copy()
    r["symbol"] = r["symbol"].astype(str)
    r["reason_code"] = r["reason_code"].astype(str)
    r["detail"] = r["detail"].fillna("").astype(str)
    prefix = r["date"].astype("str").str.slice(0, 10)
    r["day"] = pd.to_datetime(prefix, format="%Y-%m-%d", errors="coerce").astype("datetime64[ns]")
    return r.loc[~(r["day"] > as_of), ["symbol", "reason_code", "detail", "day"]].reset_index(drop=True)


def _group_median(x: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Per contiguous group ``x[a:z]``: the median of its non-NaN values (NaN when none), per row —
    a groupby ``transform("median")``: the middle value, or the mean of the two middle ones
    (``(lo + hi) / 2``, as both pandas and numpy compute it). All groups sorted at once, as the
    rows of one NaN-padded matrix (NaN sorts last)."""
    lens = ends - starts
    width = int(lens.max()) if len(lens) else 0
    pad = np.full((len(lens), width), np.nan)
    rows = np.repeat(np.arange(len(lens)), lens)
    pad[rows, np.arange(len(x)) - np.repeat(starts, lens)] = x
    pad.sort(axis=1)
    m = (~np.isnan(pad)).sum(axis=1)
    r = np.arange(len(lens))
    lo, hi = pad[r, np.maximum((m - 1) // 2, 0)], pad[r, m // 2]  # the two middle values (one when m is odd)
    med = np.where(m % 2 == 1, hi, (lo + hi) / 2)
    med = np.where(m > 0, med, np.nan)
    return np.repeat(med, lens)


def _robust_outliers(x: np.ndarray, code: np.ndarray, k: float, min_obs: int) -> np.ndarray:
    """|x − median| > k · robust σ per symbol (1.4826·MAD, std where the MAD degenerates)."""
    if len(code) and not (np.diff(code) >= 0).all():  # groups made contiguous (the callers' are)
        order = np.argsort(code, kind="stable")
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        return _robust_outliers(x[order], code[order], k, min_obs)[back]
    if not len(code):
        return np.zeros(0, dtype=bool)
    starts = np.flatnonzero(np.r_[True, code[1:] != code[:-1]])
    ends = np.r_[starts[1:], len(code)].astype(np.intp)
    dev = np.abs(x - _group_median(x, starts, ends))
    sigma = 1.4826 * _group_median(dev, starts, ends)
    # When over half the values are (numerically) equal the MAD is 0 or float noise, and every
    # other value would look infinitely far out: fall back to the standard deviation.
    degenerate = ~(sigma > _DEGENERATE_SIGMA)
    if degenerate.any():
        sigma = np.where(degenerate, pd.Series(x).groupby(code).transform("std").to_numpy(dtype=float), sigma)
    enough = np.bincount(code, weights=(~np.isnan(x)).astype(float))[code] >= min_obs
    with np.errstate(invalid="ignore"):
        return (dev > k * sigma) & (sigma > _DEGENERATE_SIGMA) & enough


def _series_flags(b: pd.DataFrame, code: np.ndarray, p: QualityParams) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """Per-bar masks for the flags measured on the valid series (``b`` sorted by code, date),
    and the corporate-action events (``row`` indexes ``b``)."""
    close = b["close"].to_numpy(dtype=float)
    adj = b["adj_close"].to_numpy(dtype=float)
    volume = b["volume"].to_numpy(dtype=float)
    # "No adj_close of its own": normalization defaulted it to close for the whole symbol.
    differs = np.bincount(code, weights=(adj != close).astype(float)) if len(code) else np.zeros(0)
    own_adj = differs[code] > 0 if len(code) else np.zeros(0, dtype=bool)
    eligible = b["asset_class"].isin(p.corporate_actions.asset_classes).to_numpy(dtype=bool)
    events = detect_corporate_actions(code, close, adj, volume, own_adj, p.corporate_actions, eligible,
                                      b["open"].to_numpy(dtype=float))
    if len(code) == 0:
        none = np.zeros(0, dtype=bool)
        return {"return_spikes": none, "volume_spikes": none, "stale_prices": none, "split_like_jumps": none,
                "zero_bars": none}, events
    same_sym = np.r_[False, code[1:] == code[:-1]]
    prev_adj = np.where(same_sym, np.r_[np.nan, adj[:-1]], np.nan)
    adj_spike = _robust_outliers(np.log(adj / prev_adj), code, p.spike_sigma, p.spike_min_obs)
    split_like = np.zeros(len(code), dtype=bool)
    split_like[events.loc[events["flag"] == "UNADJUSTED_SPLIT", "row"].to_numpy(dtype=np.intp)] = True

    vol_spike = _robust_outliers(np.log1p(np.clip(volume, 0, None)), code, p.spike_sigma, p.spike_min_obs)

    same_close = same_sym & (close == np.r_[np.nan, close[:-1]])
    run_id = np.cumsum(~same_close)
    run_len = np.bincount(run_id)[run_id]
    stale = same_close & (run_len >= p.stale_min_run)
    o, h, lo = (b[c].to_numpy(dtype=float) for c in ("open", "high", "low"))
    zero_bar = (volume == 0) & (o == h) & (h == lo) & (lo == close)
    return {
        "return_spikes": adj_spike & ~split_like,
        "volume_spikes": vol_spike,
        "stale_prices": stale,
        "split_like_jumps": split_like,
        "zero_bars": zero_bar,
    }, events


def empty_events() -> pd.DataFrame:
    return pd.DataFrame({
        "symbol": pd.Series([], dtype=str), "session": pd.Series([], dtype="datetime64[ns]"),
        "flag": pd.Series([], dtype=str), "reason_code": pd.Series([], dtype=str),
        "value": pd.Series([], dtype="float64"), "detail": pd.Series([], dtype=str),
    })


_SERIES_EVENT: dict[str, tuple[str, ReasonCode, str]] = {
    # flag -> (column giving the value, reason code, detail)
    "return_spikes": ("log_return", ReasonCode.RETURN_SPIKE, "adj_close log return beyond the robust sigma limit"),
    "volume_spikes": ("volume", ReasonCode.VOLUME_SPIKE, "log(1 + volume) beyond the robust sigma limit"),
    "stale_prices": ("close", ReasonCode.STALE_PRICE, "close identical to the previous session's (stale run)"),
    "zero_bars": ("volume", ReasonCode.ZERO_BAR, "no trading: volume 0 and open = high = low = close"),
}
_CA_FLAG: dict[str, tuple[str, ReasonCode]] = {
    "UNADJUSTED_SPLIT": ("split_like_jumps", ReasonCode.UNADJUSTED_SPLIT),
    "SPLIT_ADJUSTED": ("split_adjusted", ReasonCode.SPLIT_ADJUSTED),
    "DIVIDEND_ADJUSTED": ("dividend_adjusted", ReasonCode.DIVIDEND_ADJUSTED),
}
_REJECT_EVENT: dict[str, str] = {
    **{str(c): flag for flag, codes in _REJECT_FLAGS.items() for c in codes},
    str(ReasonCode.NEGATIVE_VOLUME): "negative_volume",
}


def _events(
    symbols: list[str], b: pd.DataFrame, code: np.ndarray, rj: pd.DataFrame, rj_code: np.ndarray,
    masks: Mapping[str, np.ndarray], ca: pd.DataFrame, expected: np.ndarray, missing: np.ndarray,
    sym_cal: np.ndarray, cal_sessions: Mapping[str, np.ndarray],
) -> pd.DataFrame:
    """Every flag as a dated event (``EVENT_COLUMNS``), sorted by symbol, session, flag."""
    sym = np.asarray(symbols, dtype=object)
    parts: list[pd.DataFrame] = []
    b_date = b["date"].to_numpy(dtype="datetime64[ns]")

    def add(rows_sym: np.ndarray, session: np.ndarray, flag: str, rc: ReasonCode | str,
            value: np.ndarray | float, detail: np.ndarray | str) -> None:
        if len(rows_sym):
            parts.append(pd.DataFrame({"symbol": rows_sym, "session": session, "flag": flag,
                                       "reason_code": str(rc), "value": value, "detail": detail}))

    if len(code):
        adj = b["adj_close"].to_numpy(dtype=float)
        same = np.r_[False, code[1:] == code[:-1]]
        with np.errstate(divide="ignore", invalid="ignore"):
            values = {"log_return": np.where(same, np.log(adj / np.r_[np.nan, adj[:-1]]), np.nan),
                      "volume": b["volume"].to_numpy(dtype=float), "close": b["close"].to_numpy(dtype=float)}
        for flag, (col, rc, detail) in _SERIES_EVENT.items():
            m = masks[flag]
            add(sym[code[m]], b_date[m], flag, rc, values[col][m], detail)
        for kind, (flag, rc) in _CA_FLAG.items():
            e = ca[ca["flag"] == kind]
            rows = e["row"].to_numpy(dtype=np.intp)
            add(sym[code[rows]], b_date[rows], flag, rc, e["value"].to_numpy(), e["detail"].to_numpy(dtype=object))

    dated = rj["day"].notna().to_numpy()
    rc_text = rj["reason_code"].to_numpy(dtype=object)
    for code_text, flag in _REJECT_EVENT.items():
        m = dated & (rc_text == code_text)
        add(sym[rj_code[m]], rj["day"].to_numpy(dtype="datetime64[ns]")[m], flag, code_text, np.nan,
            rj["detail"].to_numpy(dtype=object)[m])

    # Missing sessions: the expected sessions of the window without a valid bar.
    bounds: dict[int, tuple[int, int]] = {}
    if len(code):
        starts = np.flatnonzero(np.r_[True, code[1:] != code[:-1]])
        ends = np.r_[starts[1:], len(code)]
        bounds = {int(code[a]): (int(a), int(z)) for a, z in zip(starts, ends, strict=True)}
    for k in range(len(symbols)):
        sessions = cal_sessions.get(sym_cal[k])
        if sessions is None or expected[k] == 0 or missing[k] == 0:
            continue
        window = sessions[len(sessions) - expected[k]:]
        lo, hi = bounds.get(k, (0, 0))
        gaps = window[~np.isin(window, b_date[lo:hi])]
        if len(gaps):
            add(np.full(len(gaps), sym[k], dtype=object), gaps, "missing_sessions", ReasonCode.MISSING_SESSIONS,
                np.nan, "expected session without a valid bar")
    if not parts:
        return empty_events()
    ev = pd.concat(parts, ignore_index=True)
    ev = ev.astype({"symbol": str, "flag": str, "reason_code": str, "value": "float64", "detail": str})
    ev["session"] = pd.to_datetime(ev["session"]).astype("datetime64[ns]")
    return ev.sort_values(["symbol", "session", "flag"], kind="stable").reset_index(drop=True)


def _typed(out: pd.DataFrame) -> pd.DataFrame:
    out = out.copy()
    for col in ("symbol", "asset_class", "calendar", "status", "reason_codes"):
        out[col] = out[col].astype(str)
    for col in ("as_of", "first_date", "last_date"):
        out[col] = pd.to_datetime(out[col]).astype("datetime64[ns]")
    for col in ("expected_sessions", "observed_sessions", "valid_sessions", "rejected_rows", *FLAGS):
        out[col] = out[col].fillna(0).astype("int64")
    for col in (*(f"{f}_rate" for f in FLAGS), "data_quality_score"):
        out[col] = out[col].astype("float64")
    out["tradable"] = out["tradable"].fillna(False).astype(bool)
    return out.reset_index(drop=True)
