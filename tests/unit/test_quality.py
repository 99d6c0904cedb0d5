"""Data-quality flags, score and gates (§B3–§B5) on crafted bars with exact expected counts."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from ais_pipelines.core.asset_classes import AssetClass
from ais_pipelines.core.bars import CANONICAL_BAR_COLUMNS, REJECT_COLUMNS
from ais_pipelines.core.calendars import sessions_between
from ais_pipelines.core.quality import (
    DEFAULT_WEIGHTS,
    FLAGS,
    QUALITY_COLUMNS,
    DataStatus,
    QualityParams,
    assess,
    assess_quality,
    unavailable_quality_rows,
)
from ais_pipelines.core.reason_codes import ReasonCode
from ais_pipelines.core.schemas import DataQualitySchema, validate_frame

XNYS = sessions_between("XNYS", "2015-01-01", "2024-12-31")
SIGMA = 1.4826 * 0.01  # robust σ of the crafted ±1 % returns (MAD = 0.01)


def _walk(n: int, start: float = 100.0) -> np.ndarray:
    """Closes whose log returns alternate +1 % / −1 %: no spikes, no stale runs, no splits."""
    r = np.where(np.arange(n - 1) % 2 == 0, 0.01, -0.01)
    return start * np.exp(np.r_[0.0, np.cumsum(r)])


def _bars(
    symbol: str,
    dates: pd.DatetimeIndex | list[pd.Timestamp],
    close: np.ndarray | list[float],
    *,
    volume: np.ndarray | float = 1e6,
    adj: np.ndarray | None = None,
    asset_class: str = "STOCKS",
) -> pd.DataFrame:
    c = np.asarray(close, dtype=float)
    df = pd.DataFrame(
        {
            "symbol": symbol,
            "date": pd.DatetimeIndex(dates).as_unit("ns"),
            "open": c,
            "high": c,
            "low": c,
            "close": c,
            "volume": volume,
            "adj_close": c if adj is None else np.asarray(adj, dtype=float),
            "asset_class": asset_class,
            "provider": "test",
        }
    )
    for col in ("symbol", "asset_class", "provider"):
        df[col] = df[col].astype("str")
    return df[CANONICAL_BAR_COLUMNS]


def _rejects(rows: list[tuple[str, str | None, ReasonCode]]) -> pd.DataFrame:
    df = pd.DataFrame(
        [
            {"symbol": s, "date": d, "reason_code": str(c), "detail": "", "source": "t", "provider": "test"}
            for s, d, c in rows
        ],
        columns=REJECT_COLUMNS,
    )
    return df.astype("str")


NO_REJECTS = _rejects([])


def _one(q: pd.DataFrame, symbol: str) -> pd.Series:
    row = q.loc[q["symbol"] == symbol]
    assert len(row) == 1
    return row.iloc[0]


def _day(i: int) -> str:
    return XNYS[i].strftime("%Y-%m-%d")


# --- the clean case and the window --------------------------------------------------------


def test_clean_long_history_is_valid_with_score_one() -> None:
    bars = _bars("AAPL", XNYS[:1300], _walk(1300))
    q = assess_quality(bars, NO_REJECTS, XNYS[1299])
    assert list(q.columns) == QUALITY_COLUMNS
    r = _one(q, "AAPL")
    assert (r["expected_sessions"], r["observed_sessions"], r["valid_sessions"]) == (1300, 1300, 1300)
    assert all(r[f] == 0 for f in FLAGS) and all(r[f"{f}_rate"] == 0.0 for f in FLAGS)
    assert r["data_quality_score"] == 1.0
    assert (r["status"], r["reason_codes"], r["tradable"]) == ("VALID", "DATA_VALID", True)
    assert (r["asset_class"], r["calendar"]) == ("STOCKS", "XNYS")
    assert (r["first_date"], r["last_date"], r["as_of"]) == (XNYS[0], XNYS[1299], XNYS[1299])
    assert validate_frame(DataQualitySchema, q) == []


def test_missing_sessions_in_the_middle() -> None:
    keep = np.ones(1300, dtype=bool)
    keep[np.arange(100, 1300, 100)] = False  # 12 holes
    assert (~keep).sum() == 12
    bars = _bars("AAPL", XNYS[:1300][keep], _walk(1300)[keep])
    r = _one(assess_quality(bars, NO_REJECTS, XNYS[1299]), "AAPL")
    assert (r["expected_sessions"], r["valid_sessions"], r["missing_sessions"]) == (1300, 1288, 12)
    assert r["missing_sessions_rate"] == pytest.approx(12 / 1300)
    assert r["data_quality_score"] == pytest.approx(1 - 12 / 1300)
    assert r["reason_codes"] == "DATA_VALID;MISSING_SESSIONS"
    assert r["status"] == "VALID"


def test_late_listing_is_short_history_not_missing_data() -> None:
    bars = _bars("NEWCO", XNYS[1000:1300], _walk(300))
    r = _one(assess_quality(bars, NO_REJECTS, XNYS[1299]), "NEWCO")
    assert r["first_date"] == XNYS[1000]
    assert (r["expected_sessions"], r["valid_sessions"], r["missing_sessions"]) == (300, 300, 0)
    assert r["data_quality_score"] == 1.0
    assert (r["status"], r["reason_codes"], r["tradable"]) == (
        "INSUFFICIENT_HISTORY",
        "INSUFFICIENT_HISTORY",
        False,
    )


def test_feed_that_stops_early_counts_the_tail_as_missing() -> None:
    bars = _bars("STOP", XNYS[:1250], _walk(1250))
    r = _one(assess_quality(bars, NO_REJECTS, XNYS[1299]), "STOP")
    assert r["last_date"] == XNYS[1249]
    assert (r["expected_sessions"], r["valid_sessions"], r["missing_sessions"]) == (1300, 1250, 50)
    assert r["data_quality_score"] == pytest.approx(1 - 50 / 1300)
    assert r["status"] == "INSUFFICIENT_HISTORY"  # 1250 < 1260 valid sessions


def test_bars_and_rejects_after_as_of_are_ignored() -> None:
    bars = _bars("AAPL", XNYS[:1300], _walk(1300))
    rej = _rejects([("AAPL", _day(1100), ReasonCode.OHLC_INCONSISTENT)])
    r = _one(assess_quality(bars, rej, XNYS[999]), "AAPL")
    assert (r["expected_sessions"], r["valid_sessions"], r["last_date"]) == (1000, 1000, XNYS[999])
    assert (r["ohlc_inconsistent"], r["rejected_rows"]) == (0, 0)
    # A symbol whose data all lies after as_of was not seen yet.
    later = _bars("LATER", XNYS[1100:1200], _walk(100))
    q = assess_quality(pd.concat([bars, later]), NO_REJECTS, XNYS[999])
    assert q["symbol"].tolist() == ["AAPL"]


def test_crypto_window_counts_calendar_days() -> None:
    days = pd.date_range("2024-01-01", "2024-01-31")
    keep = [d for d in days if d.day != 13]  # one Saturday missing
    bars = _bars("BTC-USD", keep, _walk(len(keep)), asset_class="CRYPTO")
    r = _one(assess_quality(bars, NO_REJECTS, pd.Timestamp("2024-01-31")), "BTC-USD")
    assert (r["calendar"], r["expected_sessions"], r["valid_sessions"], r["missing_sessions"]) == (
        "24/7",
        31,
        30,
        1,
    )


def test_calendar_override_changes_expected_sessions() -> None:
    days = XNYS[:20]
    bars = _bars("AAPL", days, _walk(20))
    q = assess_quality(bars, NO_REJECTS, days[-1], calendars={"AAPL": "24/7"})
    r = _one(q, "AAPL")
    expected = (days[-1] - days[0]).days + 1
    assert (r["calendar"], r["expected_sessions"], r["missing_sessions"]) == ("24/7", expected, expected - 20)


# --- flags from the rejects ---------------------------------------------------------------


def test_reject_derived_flags_and_counts() -> None:
    n = 100
    rejected_sessions = {10, 20, 30, 40, 50}
    absent = rejected_sessions | {60}  # 60: no row at all
    idx = [i for i in range(n) if i not in absent]
    bars = _bars("AAPL", XNYS[idx], _walk(n)[idx])
    rej = _rejects(
        [
            ("AAPL", _day(5), ReasonCode.DUPLICATE_ROW),  # extra copies; sessions 5 and 6 stay valid
            ("AAPL", _day(6), ReasonCode.DUPLICATE_ROW),
            ("AAPL", _day(10), ReasonCode.CONFLICTING_DUPLICATE),
            ("AAPL", _day(10) + "T05:00:00Z", ReasonCode.CONFLICTING_DUPLICATE),
            ("AAPL", _day(10), ReasonCode.CONFLICTING_DUPLICATE),
            ("AAPL", _day(20), ReasonCode.NON_POSITIVE_PRICE),
            ("AAPL", _day(30), ReasonCode.OHLC_INCONSISTENT),
            ("AAPL", _day(40), ReasonCode.OHLC_INCONSISTENT),
            ("AAPL", _day(50), ReasonCode.MISSING_VALUE),
            ("AAPL", _day(150), ReasonCode.DUPLICATE_ROW),  # after as_of: ignored
            ("MSFT", _day(5), ReasonCode.DUPLICATE_ROW),  # another symbol
        ]
    )
    q = assess_quality(bars, rej, XNYS[n - 1])
    r = _one(q, "AAPL")
    assert (r["expected_sessions"], r["observed_sessions"], r["valid_sessions"]) == (100, 99, 94)
    assert (r["rejected_rows"], r["missing_sessions"], r["duplicate_dates"]) == (9, 6, 5)
    assert (r["non_positive_prices"], r["ohlc_inconsistent"]) == (1, 2)
    assert r["duplicate_dates_rate"] == pytest.approx(0.05)
    # 1 − (1.0·6 + 1.0·5 + 2.0·1 + 1.0·2) / 100
    assert r["data_quality_score"] == pytest.approx(0.85)
    assert r["reason_codes"] == (
        "DUPLICATE_DATES;INSUFFICIENT_HISTORY;MISSING_SESSIONS;NON_POSITIVE_PRICE;OHLC_INCONSISTENT"
    )
    assert _one(q, "MSFT")["duplicate_dates"] == 1


def test_symbol_seen_only_in_rejects_scores_zero_and_is_never_tradable() -> None:
    rej = _rejects(
        [
            ("ETH-USD", "2024-01-06", ReasonCode.OHLC_INCONSISTENT),
            ("ETH-USD", "garbage", ReasonCode.BAD_TIMESTAMP),
            ("ZZZ", None, ReasonCode.MISSING_VALUE),
        ]
    )
    q = assess_quality(
        _bars("AAPL", XNYS[:10], _walk(10)).iloc[:0],
        rej,
        pd.Timestamp("2024-01-10"),
        asset_classes={"ZZZ": AssetClass.FX},
    )
    assert q["symbol"].tolist() == ["ETH-USD", "ZZZ"]
    eth = _one(q, "ETH-USD")
    assert (eth["asset_class"], eth["calendar"]) == ("CRYPTO", "24/7")  # classified by spelling
    assert (eth["expected_sessions"], eth["observed_sessions"], eth["valid_sessions"]) == (5, 1, 0)
    assert (eth["missing_sessions"], eth["ohlc_inconsistent"], eth["rejected_rows"]) == (5, 1, 2)
    assert (eth["data_quality_score"], eth["status"], eth["tradable"]) == (0.0, "INVALID_DATA", False)
    assert eth["reason_codes"] == "INSUFFICIENT_HISTORY;INVALID_DATA;MISSING_SESSIONS;OHLC_INCONSISTENT"
    zzz = _one(q, "ZZZ")
    assert (zzz["asset_class"], zzz["calendar"]) == ("FX", "24/5")
    assert (zzz["expected_sessions"], zzz["missing_sessions_rate"], zzz["data_quality_score"]) == (
        0,
        1.0,
        0.0,
    )
    assert pd.isna(zzz["first_date"]) and pd.isna(zzz["last_date"])
    assert validate_frame(DataQualitySchema, q) == []


# --- flags from the valid series ----------------------------------------------------------


def _returns_with_outlier(x: float) -> np.ndarray:
    """202 log returns: 100 × +1 %, 100 × −1 %, one more on the far side from the outlier x,
    and x itself: the median is 0 and the MAD 0.01 whatever x is."""
    base = np.where(np.arange(200) % 2 == 0, 0.01, -0.01)
    return np.r_[base[:150], x, base[150:], -0.01 if x > 0 else 0.01]


@pytest.mark.parametrize(("multiple", "flagged"), [(6.2, 1), (-6.2, 1), (5.0, 0), (5.9, 0)])
def test_return_spike_beyond_six_sigma_is_flagged_and_five_sigma_is_not(
    multiple: float, flagged: int
) -> None:
    r = _returns_with_outlier(multiple * SIGMA)
    close = 100 * np.exp(np.r_[0.0, np.cumsum(r)])
    bars = _bars("AAPL", XNYS[:203], close)
    row = _one(assess_quality(bars, NO_REJECTS, XNYS[202]), "AAPL")
    assert row["return_spikes"] == flagged
    assert row["split_like_jumps"] == 0 and row["stale_prices"] == 0 and row["volume_spikes"] == 0
    assert row["data_quality_score"] == pytest.approx(1 - 2.0 * flagged / 203)
    assert ("RETURN_SPIKE" in row["reason_codes"]) == bool(flagged)


def test_degenerate_mad_falls_back_to_the_standard_deviation() -> None:
    # 30 × +1 % and 29 × −1 %: the MAD is 0 up to float noise. A noise-sized σ would flag every
    # −1 % day; the std fallback flags nothing.
    bars = _bars("AAPL", XNYS[:60], _walk(60))
    row = _one(assess_quality(bars, NO_REJECTS, XNYS[59]), "AAPL")
    assert row["return_spikes"] == 0


def test_spike_sigma_is_a_parameter() -> None:
    close = 100 * np.exp(np.r_[0.0, np.cumsum(_returns_with_outlier(5.0 * SIGMA))])
    bars = _bars("AAPL", XNYS[:203], close)
    row = _one(assess_quality(bars, NO_REJECTS, XNYS[202], QualityParams(spike_sigma=4.0)), "AAPL")
    assert row["return_spikes"] == 1


def test_spikes_need_enough_observations() -> None:
    close = 100 * np.exp(np.r_[0.0, np.cumsum(_returns_with_outlier(50 * SIGMA))])
    bars = _bars("AAPL", XNYS[:203], close)
    row = _one(assess_quality(bars, NO_REJECTS, XNYS[202], QualityParams(spike_min_obs=500)), "AAPL")
    assert row["return_spikes"] == 0


def test_spikes_are_measured_per_symbol() -> None:
    calm = _bars("CALM", XNYS[:203], _walk(203))
    close = 100 * np.exp(np.r_[0.0, np.cumsum(_returns_with_outlier(8 * SIGMA))])
    wild = _bars("WILD", XNYS[:203], close)
    q = assess_quality(pd.concat([wild, calm]), NO_REJECTS, XNYS[202])
    assert q["symbol"].tolist() == ["CALM", "WILD"]
    assert q["return_spikes"].tolist() == [0, 1]


@pytest.mark.parametrize(("multiple", "flagged"), [(7.0, 1), (5.0, 0)])
def test_volume_spike_on_log_volume(multiple: float, flagged: int) -> None:
    sigma_v = 1.4826 * 0.1
    base = np.where(np.arange(200) % 2 == 0, 10.1, 9.9)
    log_v = np.r_[base[:120], 10.0 + multiple * sigma_v, base[120:], 9.9]  # median 10, MAD 0.1
    bars = _bars("AAPL", XNYS[:202], _walk(202), volume=np.expm1(log_v))
    row = _one(assess_quality(bars, NO_REJECTS, XNYS[201]), "AAPL")
    assert (row["volume_spikes"], row["return_spikes"]) == (flagged, 0)
    assert row["data_quality_score"] == pytest.approx(1 - 0.5 * flagged / 202)


def test_zero_volume_series_has_no_volume_spikes() -> None:
    bars = _bars("EURUSD", XNYS[:100], _walk(100), volume=0.0, asset_class="FX")
    row = _one(assess_quality(bars, NO_REJECTS, XNYS[99], calendars={"EURUSD": "XNYS"}), "EURUSD")
    assert row["volume_spikes"] == 0


@pytest.mark.parametrize(("min_run", "expected"), [(3, 5), (2, 6), (4, 3), (5, 0)])
def test_stale_prices_count_sessions_after_the_first_of_each_long_run(min_run: int, expected: int) -> None:
    close = [100, 101, 101, 101, 101, 102, 103, 103, 104, 104, 104, 105]
    # runs: 101×4 → 3 stale sessions, 103×2 → 1 (only if min_run ≤ 2), 104×3 → 2 (if min_run ≤ 3)
    bars = _bars("AAPL", XNYS[:12], close)
    row = _one(assess_quality(bars, NO_REJECTS, XNYS[11], QualityParams(stale_min_run=min_run)), "AAPL")
    assert row["stale_prices"] == expected
    assert row["data_quality_score"] == pytest.approx(1 - expected / 12)


def test_stale_runs_do_not_span_symbols() -> None:
    a = _bars("A", XNYS[:3], [100, 101, 102])
    b = _bars("B", XNYS[:3], [102, 102, 103])  # A ends at 102, B starts at 102: no run of 3
    q = assess_quality(pd.concat([a, b]), NO_REJECTS, XNYS[2])
    assert q["stale_prices"].tolist() == [0, 0]


def _split_series(ratio: float, n: int = 60, at: int = 30) -> np.ndarray:
    close = _walk(n)
    close[at:] = close[at:] * ratio * close[at - 1] / close[at]  # the session `at` jumps by `ratio`
    return close


def _split_volume(ratio: float, n: int = 60, at: int = 30) -> np.ndarray:
    """Share volume of a real split: the share count, and so the volume level, scales by 1/ratio."""
    v = np.full(n, 1e6)
    v[at:] = 1e6 / ratio
    return v


def test_unadjusted_split_is_flagged_once_and_makes_the_symbol_invalid() -> None:
    close = _split_series(0.5)
    assert close[30] / close[29] == pytest.approx(0.5)
    bars = _bars("AAPL", XNYS[:60], close, volume=_split_volume(0.5))
    res = assess(bars, NO_REJECTS, XNYS[59], QualityParams(min_valid_sessions=60))
    row = _one(res.table, "AAPL")
    assert (row["split_like_jumps"], row["return_spikes"]) == (1, 0)  # not double-counted
    assert row["data_quality_score"] == pytest.approx(1 - 5.0 / 60)  # a high score, yet ...
    assert (row["status"], row["tradable"]) == ("INVALID_DATA", False)  # ... returns across it are wrong
    assert {"SPLIT_LIKE_JUMP", "UNADJUSTED_SPLIT", "INVALID_DATA"} <= set(row["reason_codes"].split(";"))
    ev = res.events[res.events["flag"] == "split_like_jumps"]
    assert ev["session"].tolist() == [XNYS[30]] and ev["value"].tolist() == [2.0]
    assert "2:1" in ev["detail"].iloc[0] and "volume level x2.00" in ev["detail"].iloc[0]


def test_split_absorbed_by_adj_close_uses_the_adjusted_series_and_flags_the_raw_jump() -> None:
    close = _split_series(1 / 3)
    adj = close.copy()
    adj[:30] = adj[:30] / 3  # back-adjusted: the adjusted series does not jump
    bars = _bars("AAPL", XNYS[:60], close, adj=adj, volume=_split_volume(1 / 3))
    res = assess(bars, NO_REJECTS, XNYS[59], QualityParams(min_valid_sessions=60))
    row = _one(res.table, "AAPL")
    assert (row["split_like_jumps"], row["return_spikes"], row["data_quality_score"]) == (0, 0, 1.0)
    assert (row["status"], row["reason_codes"]) == ("VALID", "DATA_VALID;SPLIT_ADJUSTED")
    ev = res.events
    assert ev[["session", "flag", "value"]].values.tolist() == [[XNYS[30], "split_adjusted", 3.0]]


def test_jump_also_in_adj_close_without_a_volume_jump_is_a_return_spike_not_a_split() -> None:
    close = _split_series(0.5)
    bars = _bars("AAPL", XNYS[:60], close, adj=close * 0.9)  # own adj_close, same -50 % move, flat volume
    row = _one(assess_quality(bars, NO_REJECTS, XNYS[59]), "AAPL")
    assert (row["split_like_jumps"], row["return_spikes"]) == (0, 1)
    assert row["data_quality_score"] == pytest.approx(1 - 2.0 / 60)


@pytest.mark.parametrize(
    ("ratio", "factor"),
    [(2.0, 0.5), (2.09, 0.5), (0.52, 2.0), (0.549, 2.0), (0.45, 2.0), (1 / 1.5, 1.5), (1.5, 2 / 3), (0.14, 7.0),
     (10.4, 0.1), (0.40, None), (0.42, None), (0.80, None)],
)
def test_standard_ratios_with_a_tolerance_for_the_days_own_move(ratio: float, factor: float | None) -> None:
    # 0.549: the measured real 2:1 split (+9.8 % on the day) the old 5 % tolerance missed.
    bars = _bars("AAPL", XNYS[:60], _split_series(ratio), volume=_split_volume(ratio))
    res = assess(bars, NO_REJECTS, XNYS[59])
    row = _one(res.table, "AAPL")
    assert row["split_like_jumps"] == (factor is not None)
    assert row["return_spikes"] == (factor is None)  # a non-split jump of this size is a spike
    if factor is not None:
        assert res.events.loc[res.events["flag"] == "split_like_jumps", "value"].tolist() == [pytest.approx(factor)]


def test_a_crash_matching_a_ratio_is_not_a_split_when_the_volume_burst_decays() -> None:
    # The measured false positive: a -52 % day (0.48, 4 % from 2:1) flagged as a split.
    n, at = 120, 60
    close = _split_series(0.48, n, at)
    volume = np.full(n, 1e6)
    volume[at:at + 10] = 1e6 * np.linspace(8, 1.2, 10)  # panic volume that fades within two weeks
    row = _one(assess_quality(_bars("CRSH", XNYS[:n], close, volume=volume), NO_REJECTS, XNYS[n - 1]), "CRSH")
    assert (row["split_like_jumps"], row["return_spikes"]) == (0, 1)
    assert "UNADJUSTED_SPLIT" not in row["reason_codes"]


def test_split_ratio_without_volume_evidence_fails_closed() -> None:
    bars = _bars("AAPL", XNYS[:60], _split_series(0.5), volume=0.0)
    row = _one(assess_quality(bars, NO_REJECTS, XNYS[59]), "AAPL")
    assert (row["split_like_jumps"], row["status"]) == (1, "INVALID_DATA")


def test_dividend_revealed_by_adj_close_is_an_event_with_its_yield() -> None:
    close = _walk(60)
    adj = close.copy()
    adj[:40] = adj[:40] * (1 - 0.02)  # a 2 % distribution going ex on session 40
    res = assess(_bars("DIV", XNYS[:60], close, adj=adj), NO_REJECTS, XNYS[59])
    ev = res.events
    assert ev[["session", "flag"]].values.tolist() == [[XNYS[40], "dividend_adjusted"]]
    assert ev["value"].iloc[0] == pytest.approx(0.02)
    assert "DIVIDEND_ADJUSTED" in _one(res.table, "DIV")["reason_codes"]


# --- score and gates ----------------------------------------------------------------------


def test_score_is_one_minus_weighted_rates_with_custom_weights() -> None:
    close = np.r_[_walk(90), np.repeat(_walk(90)[-1], 10)]  # last 10 identical: 9 stale sessions
    idx = list(range(95)) + [99]  # sessions 95..98 missing (4)
    bars = _bars("AAPL", XNYS[idx], close[idx])
    params = QualityParams(weights={**DEFAULT_WEIGHTS, "stale_prices": 3.0, "missing_sessions": 2.0})
    row = _one(assess_quality(bars, NO_REJECTS, XNYS[99], params), "AAPL")
    # Stale run: sessions 89..94 and 99 are consecutive valid bars with the same close: 7 bars → 6 stale.
    assert (row["missing_sessions"], row["stale_prices"]) == (4, 6)
    assert row["data_quality_score"] == pytest.approx(1 - 2.0 * 4 / 100 - 3.0 * 6 / 100)


def test_score_is_clipped_at_zero() -> None:
    close = np.r_[100.0, np.full(9, 100.0)]
    bars = _bars("AAPL", XNYS[:10], close)
    params = QualityParams(weights={**DEFAULT_WEIGHTS, "stale_prices": 5.0})
    row = _one(assess_quality(bars, NO_REJECTS, XNYS[9], params), "AAPL")
    assert row["stale_prices"] == 9
    assert row["data_quality_score"] == 0.0  # 1 − 5·0.9 < 0


def test_invalid_data_gate_on_a_long_history() -> None:
    close = np.r_[_walk(700), np.repeat(_walk(700)[-1], 600)]  # a run of 601 closes: 600 stale
    bars = _bars("FROZEN", XNYS[:1300], close)
    row = _one(assess_quality(bars, NO_REJECTS, XNYS[1299]), "FROZEN")
    assert (row["valid_sessions"], row["stale_prices"]) == (1300, 600)
    assert row["data_quality_score"] == pytest.approx(1 - 600 / 1300)
    assert (row["status"], row["reason_codes"], row["tradable"]) == (
        "INVALID_DATA",
        "INVALID_DATA;STALE_PRICE",
        False,
    )


def test_invalid_takes_precedence_over_insufficient_history() -> None:
    bars = _bars("BAD", XNYS[:50:2], _walk(25))  # half the sessions missing and short
    row = _one(assess_quality(bars, NO_REJECTS, XNYS[49]), "BAD")
    assert row["data_quality_score"] == pytest.approx(0.5)
    assert row["status"] == "INVALID_DATA"
    assert row["reason_codes"] == "INSUFFICIENT_HISTORY;INVALID_DATA;MISSING_SESSIONS"


def test_score_exactly_at_the_threshold_is_not_invalid() -> None:
    bars = _bars("EDGE", XNYS[:60], _walk(60))
    row = _one(assess_quality(bars, NO_REJECTS, XNYS[99]), "EDGE")  # 40 of 100 missing → 0.6
    assert row["data_quality_score"] == pytest.approx(0.6)
    assert row["status"] == "INSUFFICIENT_HISTORY"
    row = _one(assess_quality(bars, NO_REJECTS, XNYS[99], QualityParams(min_valid_sessions=60)), "EDGE")
    assert (row["status"], row["tradable"]) == ("VALID", True)
    row = _one(assess_quality(bars, NO_REJECTS, XNYS[100], QualityParams(min_valid_sessions=60)), "EDGE")
    assert row["status"] == "INVALID_DATA"  # one more missing session: 1 − 41/101 < 0.6


@pytest.mark.parametrize(("n", "status"), [(1260, "VALID"), (1259, "INSUFFICIENT_HISTORY")])
def test_history_gate_at_1260_sessions(n: int, status: str) -> None:
    bars = _bars("AAPL", XNYS[:n], _walk(n))
    row = _one(assess_quality(bars, NO_REJECTS, XNYS[n - 1]), "AAPL")
    assert (row["valid_sessions"], row["status"], row["tradable"]) == (n, status, status == "VALID")


# --- determinism, empties, params, speed --------------------------------------------------


def test_row_order_of_the_input_does_not_matter() -> None:
    bars = pd.concat(
        [_bars("B", XNYS[:300], _split_series(0.5, 300, 100), volume=_split_volume(0.5, 300, 100)),
         _bars("A", XNYS[:300], _walk(300))]
    )
    q1 = assess_quality(bars, NO_REJECTS, XNYS[299])
    q2 = assess_quality(bars.sample(frac=1.0, random_state=7), NO_REJECTS, XNYS[299])
    pd.testing.assert_frame_equal(q1, q2)
    assert q1["split_like_jumps"].tolist() == [0, 1]


def test_nothing_seen_gives_an_empty_typed_table() -> None:
    q = assess_quality(_bars("A", XNYS[:1], [1.0]).iloc[:0], NO_REJECTS, XNYS[0])
    assert q.empty and list(q.columns) == QUALITY_COLUMNS
    assert validate_frame(DataQualitySchema, q) == []


def test_columnless_empty_bars_and_unattributable_rejects() -> None:
    rej = _rejects([("", "", ReasonCode.UNREADABLE_INPUT), ("MSFT", _day(3), ReasonCode.OHLC_INCONSISTENT)])
    q = assess_quality(pd.DataFrame(), rej, XNYS[4])
    assert q["symbol"].tolist() == ["MSFT"]  # the symbol-less reject cannot be attributed
    r = _one(q, "MSFT")
    assert (r["expected_sessions"], r["ohlc_inconsistent"], r["status"]) == (2, 1, "INVALID_DATA")


def test_params_defaults_and_policy_mapping() -> None:
    p = QualityParams()
    assert (p.spike_sigma, p.stale_min_run, p.invalid_below, p.min_valid_sessions, p.window_sessions) == (
        6.0, 3, 0.6, 1260, None)
    ca = p.corporate_actions
    assert sorted(ca.share_factors) == sorted([2, 1.5, 3, 4, 5, 7, 10, 1 / 2, 2 / 3, 1 / 3, 1 / 4, 1 / 5, 1 / 7, 1 / 10])
    assert p.weights == DEFAULT_WEIGHTS and set(p.weights) == set(FLAGS)
    q = QualityParams.from_mapping(
        {"spike_sigma": 5, "weights": {"volume_spikes": 0.25}, "corporate_actions": {"split_ratios": ["2:1", "1:2"]}}
    )
    assert (q.spike_sigma, q.weights["volume_spikes"], q.weights["split_like_jumps"]) == (5, 0.25, 5.0)
    assert q.corporate_actions.share_factors.tolist() == [2.0, 0.5]
    with pytest.raises(ValueError, match="'2-1'"):
        QualityParams.from_mapping({"corporate_actions": {"split_ratios": ["2-1"]}})
    with pytest.raises(ValueError, match="unknown flags"):
        QualityParams(weights={**DEFAULT_WEIGHTS, "bogus": 1.0})
    with pytest.raises(ValueError, match="unknown quality parameters"):
        QualityParams.from_mapping({"spike_sigmaa": 5})
    with pytest.raises(ValueError):
        QualityParams(weights={**DEFAULT_WEIGHTS, "stale_prices": -1.0})
    assert {str(s) for s in DataStatus} == {"VALID", "INVALID_DATA", "INSUFFICIENT_HISTORY"}


def test_500_symbols_by_1300_sessions_all_assessed() -> None:
    """Scale correctness; speed lives in benchmarks/bench_ingestion.py (no timed unit tests)."""
    n_sym, n_days = 500, 1300
    rng = np.random.default_rng(0)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, (n_sym, n_days)), axis=1)).ravel()
    bars = pd.DataFrame(
        {
            "symbol": np.repeat([f"S{i:03d}" for i in range(n_sym)], n_days),
            "date": np.tile(XNYS[:n_days], n_sym),
            "open": close,
            "high": close,
            "low": close,
            "close": close,
            "volume": rng.lognormal(10, 0.5, close.size),
            "adj_close": close,
            "asset_class": "STOCKS",
            "provider": "test",
        }
    )
    for col in ("symbol", "asset_class", "provider"):
        bars[col] = bars[col].astype("str")
    sessions_between("XNYS", XNYS[0], XNYS[n_days - 1])  # warm the calendar cache
    t0 = time.perf_counter()
    q = assess_quality(bars, NO_REJECTS, XNYS[n_days - 1])
    elapsed = time.perf_counter() - t0
    assert len(q) == n_sym and (q["valid_sessions"] == n_days).all()
    print(f"\nassess_quality 500 x 1300: {elapsed:.2f}s")  # reported, not asserted


def test_unavailable_symbols_get_typed_invalid_rows_that_concat_cleanly() -> None:
    q = assess_quality(_bars("AAPL", XNYS[:20], _walk(20)), NO_REJECTS, XNYS[19])
    absent = unavailable_quality_rows(
        ["MSFT", "EURUSD"],
        XNYS[19],
        asset_classes={"MSFT": AssetClass.STOCKS, "EURUSD": AssetClass.FX},
        reason_codes={"MSFT": ReasonCode.PROVIDER_REJECTED},
    )
    assert list(absent.columns) == QUALITY_COLUMNS and absent["symbol"].tolist() == ["EURUSD", "MSFT"]
    msft = _one(absent, "MSFT")
    assert (msft["data_quality_score"], msft["status"], msft["tradable"]) == (0.0, "INVALID_DATA", False)
    assert msft["reason_codes"] == "INSUFFICIENT_HISTORY;INVALID_DATA;MISSING_SESSIONS;PROVIDER_REJECTED"
    assert (_one(absent, "EURUSD")["calendar"], msft["missing_sessions_rate"]) == ("24/5", 1.0)
    both = pd.concat([q, absent], ignore_index=True)
    assert validate_frame(DataQualitySchema, both) == []
    assert validate_frame(DataQualitySchema, both.drop(columns="as_of")) == []


# --- issue 13: the window is [first valid bar, D], at most window_sessions long -------------


def test_an_old_reject_does_not_move_the_window_start_back() -> None:
    # The measured bug: a reject 1,000 sessions before the first valid bar opened the window
    # there, and the symbol came out INVALID_DATA with ~1,000 phantom missing sessions.
    bars = _bars("AAPL", XNYS[1000:2300], _walk(1300))
    rej = _rejects([("AAPL", _day(0), ReasonCode.NON_POSITIVE_PRICE), ("AAPL", _day(2000), ReasonCode.MISSING_VALUE)])
    r = _one(assess_quality(bars, rej, XNYS[2299]), "AAPL")
    assert r["first_date"] == XNYS[1000]
    assert (r["expected_sessions"], r["missing_sessions"], r["non_positive_prices"], r["rejected_rows"]) == (
        1300, 0, 0, 1)
    assert (r["status"], r["data_quality_score"]) == ("VALID", 1.0)


def test_window_sessions_limits_the_assessed_window_to_the_last_n_sessions() -> None:
    keep = np.ones(2300, dtype=bool)
    keep[100:600] = False  # a 500-session hole long before the window
    bars = _bars("AAPL", XNYS[:2300][keep], _walk(2300)[keep])
    whole = _one(assess_quality(bars, NO_REJECTS, XNYS[2299]), "AAPL")
    assert (whole["expected_sessions"], whole["missing_sessions"]) == (2300, 500)
    r = _one(assess_quality(bars, NO_REJECTS, XNYS[2299], QualityParams(window_sessions=1320)), "AAPL")
    assert (r["first_date"], r["expected_sessions"], r["valid_sessions"], r["missing_sessions"]) == (
        XNYS[980], 1320, 1320, 0)


def test_coins_and_currencies_have_no_splits() -> None:
    # Found on the sample market: a coin's −27 % day with a volume jump matched 3:2.
    bars = _bars("BTC/USD", XNYS[:60], _split_series(0.5), volume=_split_volume(0.5), asset_class="CRYPTO")
    row = _one(assess_quality(bars, NO_REJECTS, XNYS[59]), "BTC/USD")
    assert (row["split_like_jumps"], row["return_spikes"]) == (0, 1)


def test_a_move_during_the_session_is_not_a_split_even_with_a_volume_jump() -> None:
    # Found on the sample market: a −26 % crisis day with volume up ×1.7 matched 3:2. A split
    # takes effect before the open; this open is still at the old level.
    close = _split_series(0.74)
    bars = _bars("CRSH", XNYS[:60], close, volume=_split_volume(1 / 1.5))
    bars.loc[30, "open"] = bars.loc[30, "high"] = close[29]
    row = _one(assess_quality(bars, NO_REJECTS, XNYS[59]), "CRSH")
    assert (row["split_like_jumps"], row["return_spikes"]) == (0, 1)
    assert row["ohlc_inconsistent"] == 0


def test_robust_outliers_equal_the_groupby_formulation_on_random_groups() -> None:
    """Issue 12: the per-symbol medians come from one sorted NaN-padded matrix; the flags equal
    the pandas groupby transform formulation (median, MAD, std fallback, count) exactly, with
    NaN, ties, degenerate (constant) groups and unsorted group codes."""
    from ais_pipelines.core.quality import _DEGENERATE_SIGMA, _robust_outliers

    def reference(x: np.ndarray, code: np.ndarray, k: float, min_obs: int) -> np.ndarray:
        xs = pd.Series(x)
        g = xs.groupby(code)
        dev = (xs - g.transform("median")).abs()
        sigma = 1.4826 * dev.groupby(code).transform("median")
        sigma = sigma.where(sigma > _DEGENERATE_SIGMA, g.transform("std"))
        enough = g.transform("count") >= min_obs
        return ((dev > k * sigma) & (sigma > _DEGENERATE_SIGMA) & enough).to_numpy(dtype=bool, na_value=False)

    rng = np.random.default_rng(1)
    flagged = 0
    for trial in range(60):
        n = int(rng.integers(0, 300))
        code = np.sort(rng.integers(0, 7, n)) if trial % 2 else rng.integers(0, 7, n)
        x = rng.standard_t(2, n) * rng.choice([1.0, 1e-14, 0.0], n)
        x[rng.random(n) < 0.1] = np.nan
        x[rng.random(n) < 0.2] = 0.5
        if trial % 5 == 0:
            x = np.round(x, 1)
        if trial % 7 == 0 and n:
            x[code == code[0]] = 3.0
        for min_obs in (0, 5, 20):
            got = _robust_outliers(x, code, 3.0, min_obs)
            assert got.dtype == bool and (got == reference(x, code, 3.0, min_obs)).all(), (trial, min_obs)
            flagged += int(got.sum())
    assert flagged > 100  # the cases do flag outliers
