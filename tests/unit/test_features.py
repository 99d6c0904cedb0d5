"""Market features (§D inputs): hand-checked numbers, point in time, speed."""

from __future__ import annotations

import math
import statistics
import time

import numpy as np
import pandas as pd
import pytest

from ais_pipelines.core.features import (
    FEATURE_COLUMNS,
    FeatureParams,
    compute_market_features,
    corwin_schultz_2day,
    ewma_variance,
    forward_returns,
    liquidity_score,
    returns_matrix,
)

# Small windows so every number can be checked by hand on an 8-bar series.
SMALL = FeatureParams(
    vol_window=3,
    ewma_min_obs=2,
    adv_window=3,
    spread_window=2,
    sma_window=4,
    mom_long=5,
    mom_skip=2,
    mom_short=3,
    corr_window=4,
    corr_min_obs=3,
    panel_length=20,
)

CLOSES = [100.0, 102.0, 101.0, 104.0, 103.0, 106.0, 105.0, 108.0]
VOLUMES = [1000.0, 1100.0, 1200.0, 1300.0, 1400.0, 1000.0, 2000.0, 1500.0]


def frame(
    symbol: str,
    dates: pd.DatetimeIndex,
    close: list[float],
    volume: list[float] | None = None,
    high: list[float] | None = None,
    low: list[float] | None = None,
    asset_class: str = "STOCKS",
    adj: list[float] | None = None,
) -> pd.DataFrame:
    c = np.asarray(close, dtype=float)
    return pd.DataFrame(
        {
            "symbol": symbol,
            "date": dates,
            "open": c,
            "high": np.asarray(high, dtype=float) if high is not None else c * 1.01,
            "low": np.asarray(low, dtype=float) if low is not None else c * 0.99,
            "close": c,
            "volume": np.asarray(volume if volume is not None else [1e6] * len(c), dtype=float),
            "adj_close": np.asarray(adj, dtype=float) if adj is not None else c,
            "asset_class": asset_class,
            "provider": "test",
        }
    )


def tiny() -> pd.DataFrame:
    return frame("AAA", pd.bdate_range("2024-01-01", periods=8), CLOSES, VOLUMES)


def test_hand_checked_single_symbol_features() -> None:
    out = compute_market_features(tiny(), "2024-01-10", SMALL)
    assert list(out.columns) == FEATURE_COLUMNS
    row = out.iloc[0]
    c = CLOSES
    assert row["n_sessions"] == 8
    assert row["last_date"] == pd.Timestamp("2024-01-10")
    assert row["close"] == 108.0
    assert row["ret_1d"] == pytest.approx(math.log(108 / 105), abs=1e-15)
    # sample std (ddof 1) of the last three log returns
    last3 = [math.log(106 / 103), math.log(105 / 106), math.log(108 / 105)]
    assert row["realized_vol_21d"] == pytest.approx(statistics.stdev(last3), rel=1e-12)
    # ADV: mean close x volume of the last 3 bars = (106*1000 + 105*2000 + 108*1500) / 3
    assert row["adv_usd_20d"] == pytest.approx((106_000 + 210_000 + 162_000) / 3, rel=1e-12)
    # SMA(4) of 103, 106, 105, 108 = 105.5 -> 108 / 105.5 - 1 = 2.5 / 105.5
    assert row["dist_sma200"] == pytest.approx(2.5 / 105.5, rel=1e-12)
    # 12-1 momentum with (long 5, skip 2): log(P[t-2] / P[t-5]) = log(106 / 101)
    assert row["momentum_12_1"] == pytest.approx(math.log(106 / 101), rel=1e-12)
    # 3-month momentum with 3 sessions: log(108 / 103)
    assert row["momentum_3m"] == pytest.approx(math.log(108 / 103), rel=1e-12)
    assert math.isnan(row["avg_corr_63d"])  # one-symbol universe: undefined, not required
    assert bool(row["features_ok"]) and row["reason_codes"] == ""
    # EWMA: bias-corrected RiskMetrics weights over the 7 returns
    r = [math.log(c[i] / c[i - 1]) for i in range(1, 8)]
    lam = 0.94
    num = sum(lam**k * r[-1 - k] ** 2 for k in range(7))
    den = sum(lam**k for k in range(7))
    assert row["ewma_vol"] == pytest.approx(math.sqrt(num / den), rel=1e-12)


def test_ewma_recursion_matches_riskmetrics_and_pandas() -> None:
    rng = np.random.default_rng(3)
    r = rng.normal(0, 0.02, 400)
    var = ewma_variance(r[None, :], 0.94, 21)[0]
    # pandas' adjust=True EWMA of r^2 is the same estimator
    ref = pd.Series(r**2).ewm(alpha=0.06, adjust=True).mean().to_numpy()
    assert np.allclose(var[20:], ref[20:], rtol=1e-12)
    assert np.isnan(var[:20]).all()  # fewer than 21 returns: not reported
    # once the start-up weight 0.94^n is negligible it is the textbook recursion
    s2 = r[0] ** 2
    for x in r[1:]:
        s2 = 0.94 * s2 + 0.06 * x * x
    assert var[-1] == pytest.approx(s2, rel=1e-9)
    # one explicit step of the recursion: var_t = 0.94 var_{t-1} + 0.06 r_t^2 (up to 0.94^n)
    assert var[-1] == pytest.approx(0.94 * var[-2] + 0.06 * r[-1] ** 2, rel=1e-9)


def test_corwin_schultz_reference_values() -> None:
    # H0=102 L0=98 C0=100, H1=103 L1=99 (no overnight gap):
    # beta  = ln(102/98)^2 + ln(103/99)^2 = 0.00316931
    # gamma = ln(103/98)^2               = 0.00247621
    # alpha = (sqrt(2 beta) - sqrt(beta)) / (3 - 2 sqrt 2) - sqrt(gamma / (3 - 2 sqrt 2)) = 0.0157772
    # S = 2 (e^alpha - 1) / (1 + e^alpha) = 0.0157769
    s = corwin_schultz_2day(*(np.array([v]) for v in (102.0, 98.0, 100.0, 103.0, 99.0)))
    assert s[0] == pytest.approx(0.0157769, abs=5e-7)
    # Gap up: L1 = 104 > C0 = 100, so day 1 is shifted down by 4 to (102, 100) first
    gap = corwin_schultz_2day(*(np.array([v]) for v in (101.0, 99.0, 100.0, 106.0, 104.0)))
    shifted = corwin_schultz_2day(*(np.array([v]) for v in (101.0, 99.0, 100.0, 102.0, 100.0)))
    assert gap[0] == pytest.approx(shifted[0], abs=1e-15)
    assert gap[0] == pytest.approx(-0.00412211, abs=5e-8)


def test_spread_feature_is_window_mean_in_bps_with_floor() -> None:
    dates = pd.bdate_range("2024-01-01", periods=3)
    # pairs (bar0, bar1) and (bar1, bar2)
    bars = frame("AAA", dates, [100.0, 101.0, 100.5], high=[102.0, 103.0, 101.0], low=[98.0, 99.0, 100.0])
    p = FeatureParams(spread_window=2, panel_length=10)
    got = compute_market_features(bars, dates[-1], p).iloc[0]["spread_bps_est"]
    h, lo, c = [102.0, 103.0, 101.0], [98.0, 99.0, 100.0], [100.0, 101.0, 100.5]
    s1 = corwin_schultz_2day(*(np.array([v]) for v in (h[0], lo[0], c[0], h[1], lo[1])))[0]
    s2 = corwin_schultz_2day(*(np.array([v]) for v in (h[1], lo[1], c[1], h[2], lo[2])))[0]
    assert s1 == pytest.approx(0.0157769, abs=5e-7)  # the reference pair above
    assert got == pytest.approx(max((s1 + s2) / 2 * 1e4, 1.0), rel=1e-12)
    # a flat, gapless market estimates a negative spread -> floored at 1 bp
    flat = frame("BBB", dates, [100.0, 100.0, 100.0], high=[100.1] * 3, low=[99.9] * 3)
    assert compute_market_features(flat, dates[-1], p).iloc[0]["spread_bps_est"] >= 1.0


def test_split_in_raw_prices_does_not_move_adjusted_features() -> None:
    dates = pd.bdate_range("2024-01-01", periods=8)
    adj = np.array(CLOSES)
    raw = adj.copy()
    raw[:4] *= 2.0  # a 2:1 split before bar 4: raw prices halve, adj_close is continuous
    vol = np.array(VOLUMES)
    vol[:4] /= 2.0
    split = frame(
        "AAA", dates, list(raw), list(vol), high=list(raw * 1.01), low=list(raw * 0.99), adj=list(adj)
    )
    a = compute_market_features(split, dates[-1], SMALL).iloc[0]
    b = compute_market_features(tiny(), dates[-1], SMALL).iloc[0]
    for col in (
        "ret_1d",
        "realized_vol_21d",
        "ewma_vol",
        "dist_sma200",
        "momentum_12_1",
        "momentum_3m",
        "spread_bps_est",
    ):
        assert a[col] == pytest.approx(b[col], rel=1e-12), col


def test_avg_corr_on_common_dates_across_calendars() -> None:
    rng = np.random.default_rng(11)
    wk = pd.bdate_range("2024-01-01", "2024-03-29")
    every = pd.date_range("2024-01-01", "2024-03-29")
    base = rng.normal(0, 0.01, len(every))
    s_every = pd.Series(base, index=every)

    def prices(rets: np.ndarray) -> list[float]:
        return list(100 * np.exp(np.cumsum(rets)))

    a_ret = s_every.reindex(wk).to_numpy() + rng.normal(0, 0.01, len(wk))
    b_ret = -0.5 * s_every.reindex(wk).to_numpy() + rng.normal(0, 0.01, len(wk))
    c_ret = base + rng.normal(0, 0.005, len(every))
    bars = pd.concat(
        [
            frame("A", wk, prices(a_ret)),
            frame("B", wk, prices(b_ret)),
            frame("C", every, prices(c_ret), asset_class="CRYPTO"),
        ],
        ignore_index=True,
    )
    p = FeatureParams(corr_window=20, corr_min_obs=10, panel_length=400)
    out = compute_market_features(bars, "2024-03-29", p).set_index("symbol")
    rets = {s: np.log(g.set_index("date")["adj_close"]).diff().dropna() for s, g in bars.groupby("symbol")}
    for sym in ("A", "B", "C"):
        own = rets[sym].iloc[-20:]
        cors = []
        for other in ("A", "B", "C"):
            if other == sym:
                continue
            j = pd.concat([own, rets[other]], axis=1, join="inner").dropna()
            cors.append(np.corrcoef(j.iloc[:, 0], j.iloc[:, 1])[0, 1])
        assert out.loc[sym, "avg_corr_63d"] == pytest.approx(np.mean(cors), rel=1e-10), sym
    # B loads on the common factor negatively
    assert out.loc["B", "avg_corr_63d"] < 0


def test_liquidity_score_thresholds_and_monotonicity() -> None:
    # liquid large cap: $2B ADV, 2 bps -> 0.8 * 1 + 0.2 * 1
    assert liquidity_score(2e9, 2.0) == pytest.approx(1.0)
    # large cap with a noisy 40 bps daily-bar estimate still > 0.9
    expect = 0.8 + 0.2 * math.log(500 / 40) / math.log(100)
    assert liquidity_score(1e8, 40.0) == pytest.approx(expect) and expect > 0.9
    # thin name: $1M ADV, 80 bps -> 0.8 * ln(10)/ln(500) + 0.2 * ln(500/80)/ln(100) = 0.376
    thin = 0.8 * math.log(10) / math.log(500) + 0.2 * math.log(500 / 80) / math.log(100)
    assert liquidity_score(1e6, 80.0) == pytest.approx(thin) and thin < 0.7
    advs = np.logspace(4, 10, 50)
    spreads = np.logspace(-1, 3, 50)
    s_adv = liquidity_score(advs, np.full(50, 20.0))
    s_spr = liquidity_score(np.full(50, 1e7), spreads)
    assert np.all(np.diff(s_adv) >= 0) and np.all(np.diff(s_spr) <= 0)
    assert np.all((s_adv >= 0) & (s_adv <= 1)) and np.all((s_spr >= 0) & (s_spr <= 1))
    # unknown inputs fail closed
    assert liquidity_score(np.nan, 5.0) == 0.0 and liquidity_score(1e9, np.nan) == 0.0
    # OTC FX without volume: ADV component full, spread decides
    assert liquidity_score(np.nan, 5.0, adv_optional=True) == pytest.approx(1.0)


def test_liquidity_in_features_for_large_and_thin_names() -> None:
    dates = pd.bdate_range("2023-01-02", periods=80)
    rng = np.random.default_rng(5)
    c = 200 * np.exp(np.cumsum(rng.normal(0, 0.01, 80)))
    tight_hi, tight_lo = c * 1.002, c * 0.998
    big = frame("BIG", dates, list(c), [5e6] * 80, high=list(tight_hi), low=list(tight_lo))  # $1B ADV
    c2 = 5 * np.exp(np.cumsum(rng.normal(0, 0.03, 80)))
    thin = frame("THN", dates, list(c2), [1e5] * 80, high=list(c2 * 1.04), low=list(c2 * 0.96))  # ~$500k
    fx = frame(
        "EUR/USD",
        dates,
        list(1.1 + 0 * c),
        [0.0] * 80,
        high=[1.1005] * 80,
        low=[1.0995] * 80,
        asset_class="FX",
    )
    out = compute_market_features(pd.concat([big, thin, fx]), dates[-1], FeatureParams(panel_length=100))
    out = out.set_index("symbol")
    assert out.loc["BIG", "liquidity_score"] > 0.9
    assert out.loc["THN", "liquidity_score"] < 0.7
    assert out.loc["EUR/USD", "adv_usd_20d"] == 0.0  # reported as it is
    assert out.loc["EUR/USD", "liquidity_score"] > 0.9  # judged on the spread alone


def test_insufficient_history_and_stale_flags() -> None:
    long = tiny()
    short = frame("NEW", pd.bdate_range("2024-01-08", periods=3), [10.0, 10.5, 10.2])
    stale = frame("OLD", pd.bdate_range("2023-11-01", periods=8), CLOSES)
    out = compute_market_features(pd.concat([long, short, stale]), "2024-01-10", SMALL).set_index("symbol")
    assert bool(out.loc["AAA", "features_ok"])
    assert not bool(out.loc["NEW", "features_ok"])
    assert out.loc["NEW", "reason_codes"] == "INSUFFICIENT_FEATURES"
    assert "momentum_12_1" in out.loc["NEW", "missing_features"]
    assert out.loc["NEW", "n_sessions"] == 3
    assert not bool(out.loc["OLD", "features_ok"])
    assert out.loc["OLD", "missing_features"] == "stale_data"
    assert out.loc["OLD", "stale_days"] == (pd.Timestamp("2024-01-10") - out.loc["OLD", "last_date"]).days


def test_point_in_time_mutating_the_future_changes_nothing() -> None:
    rng = np.random.default_rng(2)
    dates = pd.bdate_range("2022-01-03", periods=400)
    frames = [
        frame(
            s,
            dates,
            list(100 * np.exp(np.cumsum(rng.normal(0, 0.015, 400)))),
            list(rng.uniform(1e5, 1e6, 400)),
        )
        for s in ("A", "B", "C")
    ]
    bars = pd.concat(frames, ignore_index=True)
    as_of = dates[300]
    base = compute_market_features(bars, as_of)
    future = bars["date"] > as_of
    mutated = bars.copy()
    for col in ("open", "high", "low", "close", "adj_close", "volume"):
        mutated.loc[future, col] = mutated.loc[future, col] * rng.uniform(0.2, 5.0, int(future.sum()))
    late = frame("LATE", dates[301:], [50.0] * 99)  # a symbol that only exists later
    mutated = pd.concat([mutated, late], ignore_index=True)
    pd.testing.assert_frame_equal(base, compute_market_features(mutated, as_of))
    pd.testing.assert_frame_equal(returns_matrix(bars, as_of, 50), returns_matrix(mutated, as_of, 50))
    fwd_a = forward_returns(bars, as_of, 5)
    fwd_b = forward_returns(mutated, as_of, 5)
    pd.testing.assert_frame_equal(fwd_a, fwd_b)
    assert fwd_a["date"].max() == dates[295]  # t + 5 sessions must be on/before as_of


def test_returns_matrix_mixed_calendars() -> None:
    wk = pd.bdate_range("2024-01-01", "2024-01-12")
    every = pd.date_range("2024-01-01", "2024-01-12")
    a = frame("A", wk, [100 + i for i in range(len(wk))])
    c = frame("C", every, [50 + 2 * i for i in range(len(every))], asset_class="CRYPTO")
    m = returns_matrix(pd.concat([a, c]), "2024-01-10", 5)
    assert list(m.index) == list(pd.date_range("2024-01-06", "2024-01-10"))
    # Monday 2024-01-08: the stock's return spans the weekend (Fri 104 -> Mon 105)
    assert m.loc["2024-01-08", "A"] == pytest.approx(math.log(105 / 104))
    assert math.isnan(m.loc["2024-01-06", "A"])
    # crypto Monday return is Sunday -> Monday: closes 62 -> 64
    assert m.loc["2024-01-08", "C"] == pytest.approx(math.log(64 / 62))


def test_speed_500_symbols_1300_sessions() -> None:
    rng = np.random.default_rng(0)
    n_sym, n_days = 500, 1300
    dates = pd.bdate_range("2019-01-01", periods=n_days)
    vol = rng.uniform(0.01, 0.03, n_sym)[:, None]
    c = 100 * np.exp(np.cumsum(rng.normal(0, 1, (n_sym, n_days)) * vol, axis=1))
    h = c * np.exp(np.abs(rng.normal(0, 0.5, c.shape)) * vol)
    lo = c * np.exp(-np.abs(rng.normal(0, 0.5, c.shape)) * vol)
    bars = pd.DataFrame(
        {
            "symbol": np.repeat([f"S{i:03d}" for i in range(n_sym)], n_days),
            "date": np.tile(dates.to_numpy(), n_sym),
            "open": c.ravel(),
            "high": h.ravel(),
            "low": lo.ravel(),
            "close": c.ravel(),
            "volume": rng.uniform(1e5, 1e7, c.size),
            "adj_close": c.ravel(),
            "asset_class": "STOCKS",
            "provider": "test",
        }
    )
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        out = compute_market_features(bars, dates[-1])
        best = min(best, time.perf_counter() - t0)
    assert len(out) == n_sym and out["features_ok"].all()
    print(f"\ncompute_market_features 500 x 1300: {best:.2f}s")  # reported; speed: benchmarks/
