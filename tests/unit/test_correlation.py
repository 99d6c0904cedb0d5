"""O(N·T) average correlations against pandas' pairwise-complete ``corr`` (the reference)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ais_pipelines.core.correlation import corr_sums, mean_pairwise_corr
from ais_pipelines.core.features import FeatureParams, compute_market_features
from ais_pipelines.core.regime import regime_inputs


def _pandas_mean_corr(x: np.ndarray, min_obs: int) -> float:
    c = pd.DataFrame(x).corr(min_periods=min_obs).to_numpy()
    v = c[np.triu_indices(c.shape[0], 1)]
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def _factor_panel(rng: np.random.Generator, t: int, n: int) -> np.ndarray:
    f = rng.normal(0, 0.01, (t, 1))
    return f * rng.uniform(-1, 2, (1, n)) + rng.normal(0, 0.01, (t, n))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mean_pairwise_corr_equals_pandas_with_gaps_and_constants(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = _factor_panel(rng, 60, 40)
    x[rng.random(x.shape) < 0.05] = np.nan  # scattered gaps in many columns
    x[:45, 3] = np.nan  # late listing: 15 obs, below min_obs with everyone
    x[:, 5] = 0.0  # stale price: zero returns, no correlation defined
    x[30:, 7] = 0.002  # constant on part of the window only
    x[::2, 9] = np.nan
    for min_obs in (2, 20, 40):
        assert mean_pairwise_corr(x, min_obs) == pytest.approx(_pandas_mean_corr(x, min_obs), rel=1e-10, abs=1e-13)


def test_mean_pairwise_corr_complete_panel_and_degenerate_cases() -> None:
    x = _factor_panel(np.random.default_rng(7), 252, 300)
    assert mean_pairwise_corr(x, 168) == pytest.approx(_pandas_mean_corr(x, 168), rel=1e-11)
    assert math.isnan(mean_pairwise_corr(x[:, :1], 2))
    assert math.isnan(mean_pairwise_corr(x[:10], 20))  # fewer rows than min_obs
    assert math.isnan(mean_pairwise_corr(np.full((30, 4), np.nan), 2))


def test_corr_sums_counts_each_pair_once_per_side() -> None:
    rng = np.random.default_rng(3)
    x = _factor_panel(rng, 50, 6)
    x[:10, 2] = np.nan
    sums, counts = corr_sums(x, x, 20)
    ref = pd.DataFrame(x).corr(min_periods=20).to_numpy()
    np.testing.assert_allclose(sums, np.nansum(ref, axis=1), rtol=1e-12)
    np.testing.assert_array_equal(counts, np.isfinite(ref).sum(axis=1))


def test_regime_corr_inputs_equal_pandas_on_a_gappy_universe() -> None:
    rng = np.random.default_rng(5)
    dates = pd.bdate_range("2022-01-03", periods=300)
    rets = pd.DataFrame(_factor_panel(rng, 300, 25), index=dates, columns=[f"S{i}" for i in range(25)])
    rets.iloc[:200, 4] = np.nan  # listed late: in the 21-day window, not the 252-day one
    rets.iloc[rng.random(rets.shape) < 0.03] = np.nan
    index = pd.Series(100 * np.exp(np.cumsum(rets.mean(axis=1).fillna(0))), index=dates)
    inp = regime_inputs(index, rets, dates[-1])
    assert inp["corr_21d"] == pytest.approx(_pandas_mean_corr(rets.iloc[-21:].to_numpy(), 14), rel=1e-10)
    assert inp["corr_252d"] == pytest.approx(_pandas_mean_corr(rets.iloc[-252:].to_numpy(), 168), rel=1e-10)


def test_avg_corr_63d_equals_pairwise_reference_across_calendars_gaps_and_stale_symbols() -> None:
    rng = np.random.default_rng(13)
    wk = pd.bdate_range("2024-01-01", "2024-06-28")
    every = pd.date_range("2024-01-01", "2024-06-28")
    factor = pd.Series(rng.normal(0, 0.01, len(every)), index=every)
    parts = []
    for k in range(14):
        crypto = k >= 11
        d = every if crypto else wk
        if k == 8:
            d = d[:-3]  # stale: last bar three sessions ago, its own window dates
        if k == 9:
            d = d[~np.isin(np.arange(len(d)), [100, 110, 111, 118])]  # missing bars inside the window
        if k == 10:
            d = d[-40:]  # short history: no full window, correlations with it need 20 common dates
        r = factor.reindex(d).to_numpy() * rng.uniform(-0.5, 1.5) + rng.normal(0, 0.01, len(d))
        c = 100 * np.exp(np.cumsum(r))
        parts.append(pd.DataFrame({"symbol": f"S{k:02d}", "date": d, "open": c, "high": c * 1.01, "low": c * 0.99,
                                   "close": c, "volume": 1e6, "adj_close": c,
                                   "asset_class": "CRYPTO" if crypto else "STOCKS"}))
    bars = pd.concat(parts, ignore_index=True)
    p = FeatureParams(corr_window=63, corr_min_obs=20, panel_length=400)
    out = compute_market_features(bars, "2024-06-28", p).set_index("symbol")
    rets = {s: np.log(g.set_index("date")["adj_close"]).diff().dropna() for s, g in bars.groupby("symbol")}
    checked = 0
    for sym, own_all in rets.items():
        if len(own_all) < 63:
            assert math.isnan(out.loc[sym, "avg_corr_63d"])
            continue
        own = own_all.iloc[-63:]
        cors = []
        for other, r in rets.items():
            if other == sym:
                continue
            j = pd.concat([own, r], axis=1, join="inner").dropna()
            if len(j) >= 20:
                cors.append(j.iloc[:, 0].corr(j.iloc[:, 1]))
        assert out.loc[sym, "avg_corr_63d"] == pytest.approx(np.mean(cors), rel=1e-10), sym
        checked += 1
    assert checked == 13
