"""Regime as a probability flow (§C1–C4): numbers checked against independent references.

References used: the S&P 500 daily history shipped with ``arch`` (1999–2018), a hand-written
Hamilton filter, brute-force enumeration of regime paths, and hand-computed index/input values.
"""

from __future__ import annotations

import itertools
import json
import math
import time

import numpy as np
import pandas as pd
import pytest
from arch.data import sp500

from ais_pipelines.core.reason_codes import ReasonCode
from ais_pipelines.core.regime import (
    REGIMES,
    RegimeFit,
    build_market_index,
    crisis_probability_within,
    exposure_scale,
    fit_regime_model,
    regime_forecast,
    regime_inputs,
    regime_snapshot,
)

# --------------------------------------------------------------------------------------------
# Fixtures and references
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sp_close() -> pd.Series:
    return sp500.load()["Adj Close"]


@pytest.fixture(scope="module")
def sp_returns(sp_close: pd.Series) -> pd.Series:
    return sp_close.pct_change()


@pytest.fixture(scope="module")
def full_fit(sp_returns: pd.Series):
    t0 = time.perf_counter()
    out = fit_regime_model(sp_returns)
    print(f"\nS&P 500 1999-2018 regime fit: {time.perf_counter() - t0:.2f}s")  # reported, not asserted
    return out


def hamilton_filter(y_pct: np.ndarray, fit: RegimeFit) -> np.ndarray:
    """Textbook Hamilton filter started from the ergodic distribution (independent of statsmodels)."""
    P = fit.P
    mu = np.array(fit.means_pct)
    var = np.array(fit.variances_pct)
    w, v = np.linalg.eig(P.T)
    pi = np.real(v[:, np.argmin(np.abs(w - 1.0))])
    pred = pi / pi.sum()
    out = np.empty((len(y_pct), 3))
    for t, yt in enumerate(y_pct):
        dens = np.exp(-0.5 * (yt - mu) ** 2 / var) / np.sqrt(2 * np.pi * var)
        post = pred * dens
        out[t] = post / post.sum()
        pred = out[t] @ P
    return out


def brute_force_paths(belief: np.ndarray, P: np.ndarray, horizon: int) -> tuple[float, np.ndarray]:
    """(Pr(CRISIS visited on a path of horizon+1 states), marginal at t+horizon) by enumeration."""
    k = len(belief)
    hit = 0.0
    marginal = np.zeros(k)
    for path in itertools.product(range(k), repeat=horizon + 1):
        p = belief[path[0]]
        for a, b in itertools.pairwise(path):
            p *= P[a, b]
        if k - 1 in path:
            hit += p
        marginal[path[-1]] += p
    return hit, marginal


def random_stochastic(rng: np.random.Generator, k: int = 3) -> np.ndarray:
    M = rng.random((k, k)) ** 3  # cubed: some near-zero entries, like real fitted matrices
    return M / M.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------------------------
# Market index
# --------------------------------------------------------------------------------------------


def test_build_market_index_hand_computed() -> None:
    dates = pd.bdate_range("2024-01-01", periods=5)
    closes = pd.DataFrame(
        {
            "A": [10.0, 11.0, 12.1, np.nan, 13.31],  # gap on day 4: its day-5 return is dropped
            "B": [np.nan, 20.0, 22.0, 24.2, 24.2],  # late listing: joins from day 3
            "C": [5.0, 5.0, 4.5, 4.5, 0.0],  # non-positive price = missing
        },
        index=dates,
    )
    idx = build_market_index(closes)
    # day-by-day averages of available returns: 0, (0.1+0)/2, (0.1+0.1-0.1)/3, (0.1+0)/2, 0 (B flat)
    rets = [0.0, 0.05, 0.1 / 3, 0.05, 0.0]
    expected = 100 * np.cumprod(1 + np.array(rets))
    np.testing.assert_allclose(idx.to_numpy(), expected, rtol=0, atol=1e-12)
    assert idx.iloc[0] == 100.0
    assert list(idx.index) == list(dates)


def test_build_market_index_empty_and_unsorted() -> None:
    assert build_market_index(pd.DataFrame()).empty
    dates = pd.bdate_range("2024-01-01", periods=3)
    closes = pd.DataFrame({"A": [1.0, 2.0, 4.0]}, index=dates).iloc[::-1]
    np.testing.assert_allclose(build_market_index(closes).to_numpy(), [100.0, 200.0, 400.0])


# --------------------------------------------------------------------------------------------
# The fit on real data
# --------------------------------------------------------------------------------------------


def test_sp500_full_sample_labels_2008_crisis_and_2017_calm(full_fit) -> None:
    out = full_fit
    assert out.fit is not None and not out.is_fallback and out.reason_codes == ()
    fit = out.fit
    assert fit.converged and fit.n_obs == 5030
    assert str(fit.fit_start) == "1999-01-05" and str(fit.fit_end) == "2018-12-31"
    # labels by increasing variance; rows of P sum to one
    assert fit.variances_pct[0] < fit.variances_pct[1] < fit.variances_pct[2]
    np.testing.assert_allclose(fit.P.sum(axis=1), 1.0, atol=1e-12)
    # measured: variances 0.301 / 1.353 / 7.058 %², i.e. ~0.55 % / 1.16 % / 2.66 % daily vol
    np.testing.assert_allclose(fit.variances_pct, [0.301, 1.353, 7.058], rtol=0.02)

    fp = out.filtered
    assert list(fp.columns) == list(REGIMES)
    np.testing.assert_allclose(fp.sum(axis=1), 1.0, atol=1e-9)
    oct08 = fp.loc["2008-10-01":"2008-10-31", "CRISIS"]
    y2017 = fp.loc["2017-01-01":"2017-12-31", "CRISIS"]
    # measured: mean 0.977 (min 0.934) in Oct 2008; mean 0.00038 (max 0.010) in 2017
    assert oct08.mean() > 0.9
    assert oct08.min() > 0.8
    assert y2017.mean() < 0.005
    assert y2017.max() < 0.05


def test_filtered_probabilities_match_reference_hamilton_filter(full_fit, sp_returns) -> None:
    # Confirms the relabelling (P, means, variances, probabilities) is consistent.
    y = sp_returns.dropna().to_numpy() * 100
    ref = hamilton_filter(y, full_fit.fit)
    np.testing.assert_allclose(full_fit.filtered.to_numpy(), ref, atol=1e-8)


def test_walk_forward_fit_through_oct_2008_snapshot(sp_returns, sp_close) -> None:
    out = fit_regime_model(sp_returns.loc[:"2008-10-31"])
    assert out.fit is not None and str(out.fit.fit_end) == "2008-10-31"
    # measured: 0.95 mean CRISIS probability in Oct 2008 with no data after it
    assert out.filtered.loc["2008-10-01":, "CRISIS"].mean() > 0.85

    inputs = regime_inputs(sp_close, pd.DataFrame({"SPX": sp_returns}), "2008-10-31")
    snap = regime_snapshot(out, "2008-10-31", inputs=inputs)
    assert snap["regime"] == "CRISIS" and snap["reduce_only"] and snap["derisk"]
    belief = np.array([snap["belief_normal"], snap["belief_volatile"], snap["belief_crisis"]])
    assert snap["p_crisis_5d"] == pytest.approx(crisis_probability_within(belief, out.fit.P, 5), abs=1e-15)
    assert snap["p_crisis_5d"] >= snap["belief_crisis"]
    assert snap["exposure_scale"] == pytest.approx(exposure_scale(snap["p_crisis_5d"]), abs=1e-15)
    assert snap["exposure_scale"] < 0.2
    assert snap["reason_codes"] == ["CRISIS_PROBABILITY_HIGH", "CRISIS_REGIME"]
    assert snap["index_vs_sma200"] < -0.2 and snap["vol_percentile"] > 0.99
    # a fit that ends after as_of leaks the future: refused
    with pytest.raises(ValueError, match="look-ahead"):
        regime_snapshot(out, "2008-06-30")


def test_snapshot_calm_2017_no_derisk(full_fit) -> None:
    snap = regime_snapshot(full_fit, "2017-06-30", allow_lookahead=True)
    assert snap["regime"] == "NORMAL"
    assert snap["belief_date"] == "2017-06-30"
    assert snap["p_crisis_5d"] < 0.15 and not snap["derisk"] and not snap["reduce_only"]
    assert snap["exposure_scale"] == 1.0 and snap["reason_codes"] == []
    p5 = [snap["p_normal_t5"], snap["p_volatile_t5"], snap["p_crisis_t5"]]
    assert sum(p5) == pytest.approx(1.0, abs=1e-12)
    assert snap["p_crisis_5d"] >= snap["p_crisis_t5"]  # "within" dominates "at t+5"


def test_garch_vix_proxy_near_actual_vix(sp_close, sp_returns) -> None:
    # Actual VIX close on 2008-10-15 was 69.25; both proxies should be in that neighbourhood.
    inp = regime_inputs(sp_close, pd.DataFrame({"SPX": sp_returns}), "2008-10-15", garch=True)
    assert inp["vix_proxy_method"] == "garch11_21d" and inp["vix_proxy"] == inp["vix_proxy_garch"]
    assert 50 < inp["vix_proxy_garch"] < 100
    assert 50 < inp["vix_proxy_realized"] < 100
    plain = regime_inputs(sp_close, pd.DataFrame({"SPX": sp_returns}), "2008-10-15")
    assert plain["vix_proxy_method"] == "realized_21d" and math.isnan(plain["vix_proxy_garch"])


# --------------------------------------------------------------------------------------------
# Probability flow
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("horizon", [1, 2, 3, 4, 5, 6])
def test_crisis_probability_within_equals_path_enumeration(horizon: int) -> None:
    rng = np.random.default_rng(1000 + horizon)
    for _ in range(5):
        belief = rng.dirichlet(np.ones(3))
        P = random_stochastic(rng)
        hit, marginal = brute_force_paths(belief, P, horizon)
        assert crisis_probability_within(belief, P, horizon) == pytest.approx(hit, abs=1e-12)
        fc = regime_forecast(belief, P, horizon)
        np.testing.assert_allclose([fc[r] for r in REGIMES], marginal, atol=1e-12)


def test_crisis_probability_edge_cases() -> None:
    P = np.array([[0.9, 0.1, 0.0], [0.1, 0.8, 0.1], [0.0, 0.2, 0.8]])
    b = np.array([0.5, 0.3, 0.2])
    assert crisis_probability_within(b, P, 0) == pytest.approx(0.2, abs=1e-15)
    # from NORMAL with no direct route, CRISIS needs two steps: 0.1 * 0.1
    assert crisis_probability_within(np.array([1.0, 0, 0]), P, 1) == 0.0
    assert crisis_probability_within(np.array([1.0, 0, 0]), P, 2) == pytest.approx(0.01, abs=1e-15)
    assert crisis_probability_within(np.array([0, 0, 1.0]), P, 5) == 1.0
    with pytest.raises(ValueError):
        crisis_probability_within(np.array([0.5, 0.5, 0.5]), P, 5)
    with pytest.raises(ValueError):
        crisis_probability_within(b, P * 2, 5)


def test_exposure_scale_linear_ramp() -> None:
    assert exposure_scale(0.0) == 1.0
    assert exposure_scale(0.15) == 1.0  # at the threshold: not yet de-risked
    assert exposure_scale(1.0) == 0.0
    assert exposure_scale(0.575) == pytest.approx(0.5, abs=1e-15)  # midway between 0.15 and 1
    assert exposure_scale(1.0, 0.15, 0.25) == pytest.approx(0.25, abs=1e-15)
    assert exposure_scale(0.575, 0.15, 0.25) == pytest.approx(0.625, abs=1e-15)
    assert exposure_scale(0.6, 0.2, 0.0) == pytest.approx(0.5, abs=1e-15)


# --------------------------------------------------------------------------------------------
# Non-convergence guard and fallback
# --------------------------------------------------------------------------------------------


def test_fallback_on_constant_series_refilters_with_old_params(full_fit) -> None:
    prev = full_fit.fit
    dates = pd.bdate_range("2019-01-02", periods=300)
    flat = pd.Series(0.0, index=dates)
    out = fit_regime_model(flat, previous=prev)
    assert out.is_fallback and out.fit is prev
    assert out.reason_codes == (ReasonCode.REGIME_FALLBACK_LAST_GOOD_FIT,)
    assert "constant" in out.detail
    assert list(out.filtered.index) == list(dates)
    ref = hamilton_filter(np.zeros(300), prev)
    np.testing.assert_allclose(out.filtered.to_numpy(), ref, atol=1e-10)
    # zero returns are likeliest under the low-variance state: the belief settles on NORMAL
    # (measured 0.981; the transition leak out of NORMAL keeps it below 1)
    assert out.filtered["NORMAL"].iloc[-1] > 0.97


def test_fallback_on_too_few_observations(full_fit, sp_returns) -> None:
    prev = full_fit.fit
    short = sp_returns.loc["2008-10-01":"2008-10-31"]
    out = fit_regime_model(short, previous=prev)
    assert out.is_fallback and out.reason_codes == (ReasonCode.REGIME_FALLBACK_LAST_GOOD_FIT,)
    assert "too few observations (23 < 250)" in out.detail
    ref = hamilton_filter(short.to_numpy() * 100, prev)
    np.testing.assert_allclose(out.filtered.to_numpy(), ref, atol=1e-10)
    # new beliefs, not copied old ones: they differ from the in-sample beliefs on the same dates
    assert out.filtered["CRISIS"].iloc[-1] > 0.9
    assert not np.allclose(out.filtered.to_numpy(), full_fit.filtered.loc[short.index].to_numpy())


def test_fallback_on_non_convergence(full_fit, sp_returns) -> None:
    sub = sp_returns.loc["2010-01-01":"2014-12-31"]
    out = fit_regime_model(sub, previous=full_fit.fit, max_iter=1, em_iter=0)
    assert out.is_fallback and out.reason_codes == (ReasonCode.REGIME_FALLBACK_LAST_GOOD_FIT,)
    assert "did not converge" in out.detail
    np.testing.assert_allclose(
        out.filtered.to_numpy(), hamilton_filter(sub.to_numpy() * 100, full_fit.fit), atol=1e-8
    )


def test_degenerate_fit_on_iid_noise_is_rejected() -> None:
    # One Gaussian: a third regime is not identified, the fit collapses a state (~zero mass).
    x = pd.Series(
        np.random.default_rng(0).normal(0, 0.01, 500), index=pd.bdate_range("2010-01-01", periods=500)
    )
    out = fit_regime_model(x)
    assert out.failed and out.reason_codes == (ReasonCode.REGIME_FIT_FAILED,)
    assert "zero probability mass" in out.detail


def test_no_previous_fit_fails_closed() -> None:
    dates = pd.bdate_range("2019-01-02", periods=300)
    out = fit_regime_model(pd.Series(0.0, index=dates))
    assert out.failed and out.fit is None and not out.is_fallback
    assert out.reason_codes == (ReasonCode.REGIME_FIT_FAILED,)
    assert out.filtered.empty and list(out.filtered.columns) == list(REGIMES)

    snap = regime_snapshot(out, "2019-12-31", threshold=0.15, min_scale=0.1)
    assert snap["fail_closed"] and snap["regime"] == "CRISIS"
    assert snap["p_crisis_5d"] == 1.0 and snap["derisk"] and snap["reduce_only"]
    assert snap["exposure_scale"] == pytest.approx(0.1, abs=1e-15)
    assert snap["reason_codes"] == ["REGIME_FIT_FAILED", "CRISIS_PROBABILITY_HIGH", "CRISIS_REGIME"]
    assert math.isnan(snap["belief_crisis"])


# --------------------------------------------------------------------------------------------
# Determinism and persistence
# --------------------------------------------------------------------------------------------


def test_fit_is_deterministic(sp_returns) -> None:
    sub = sp_returns.loc["2007-01-01":"2009-12-31"]
    a = fit_regime_model(sub, seed=7)
    b = fit_regime_model(sub, seed=7)
    assert a.fit is not None
    assert a.fit.to_dict() == b.fit.to_dict()  # bit-identical parameters
    pd.testing.assert_frame_equal(a.filtered, b.filtered, check_exact=True)


def test_regime_fit_json_round_trip(full_fit, sp_returns) -> None:
    fit = full_fit.fit
    text = json.dumps(fit.to_dict())
    back = RegimeFit.from_dict(json.loads(text))
    assert back == fit
    np.testing.assert_array_equal(back.P, fit.P)
    # the reloaded fit behaves identically as `previous`
    short = sp_returns.loc["2008-10-01":"2008-10-31"]
    a = fit_regime_model(short, previous=fit)
    b = fit_regime_model(short, previous=back)
    pd.testing.assert_frame_equal(a.filtered, b.filtered, check_exact=True)


# --------------------------------------------------------------------------------------------
# Inputs (§C3): point in time and hand-computed values
# --------------------------------------------------------------------------------------------


def _synthetic_market(n: int = 600, k: int = 5, seed: int = 3) -> tuple[pd.Series, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2020-01-01", periods=n)
    common = rng.normal(0, 0.01, n)
    rets = pd.DataFrame(
        0.5 * common[:, None] + rng.normal(0, 0.01, (n, k)), index=dates, columns=[f"S{i}" for i in range(k)]
    )
    closes = 50 * (1 + rets).cumprod()
    return build_market_index(closes), rets


def _same(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
            continue
        if x != y:
            return False
    return True


def test_regime_inputs_point_in_time() -> None:
    index, rets = _synthetic_market()
    as_of = index.index[400]
    base = regime_inputs(index, rets, as_of)
    # Rewrite everything after as_of (crash + correlation spike): nothing may change.
    idx2, rets2 = index.copy(), rets.copy()
    idx2.iloc[401:] *= 0.3
    rets2.iloc[401:] = np.random.default_rng(9).normal(0, 0.2, (len(rets2) - 401, 1)) * np.ones((1, 5))
    assert _same(regime_inputs(idx2, rets2, as_of), base)
    # nor does truncating the data at as_of
    assert _same(regime_inputs(index.loc[:as_of], rets.loc[:as_of], as_of), base)
    # a non-session as_of uses the last session before it
    sat = pd.Timestamp("2021-07-03")
    assert regime_inputs(index, rets, sat)["data_as_of"] == "2021-07-02"


def test_regime_inputs_hand_computed() -> None:
    index, rets = _synthetic_market()
    as_of = index.index[400]
    inp = regime_inputs(index, rets, as_of)
    c = index.loc[:as_of].to_numpy()
    assert inp["index_close"] == c[-1]
    assert inp["index_vs_sma200"] == pytest.approx(c[-1] / c[-200:].mean() - 1, abs=1e-14)
    lr = np.diff(np.log(c))
    rv = np.std(lr[-21:], ddof=1) * np.sqrt(252)
    assert inp["realized_vol_21d"] == pytest.approx(rv, rel=1e-10)
    assert inp["vix_proxy"] == pytest.approx(100 * rv, rel=1e-10)
    hist = np.array([np.std(lr[i - 21 : i], ddof=1) for i in range(21, len(lr) + 1)]) * np.sqrt(252)
    assert inp["vol_history_n"] == len(hist) == 400 - 21 + 1
    assert inp["vol_percentile"] == pytest.approx(np.mean(hist <= rv + 1e-15), abs=1e-12)

    r = rets.loc[:as_of].to_numpy()

    def avg_corr(x: np.ndarray) -> float:
        C = np.corrcoef(x, rowvar=False)
        return float(C[np.triu_indices(5, 1)].mean())

    assert inp["corr_21d"] == pytest.approx(avg_corr(r[-21:]), abs=1e-12)
    assert inp["corr_252d"] == pytest.approx(avg_corr(r[-252:]), abs=1e-12)
    assert inp["corr_spike"] == pytest.approx(avg_corr(r[-21:]) - avg_corr(r[-252:]), abs=1e-12)
    # true average correlation is 0.25/(0.25+1) = 0.2: the long window should be near it
    assert inp["corr_252d"] == pytest.approx(0.2, abs=0.06)


def test_regime_inputs_short_history_is_nan_not_error() -> None:
    index, rets = _synthetic_market(n=100)
    inp = regime_inputs(index, rets, index.index[-1])
    assert math.isnan(inp["index_sma200"]) and math.isnan(inp["index_vs_sma200"])
    assert math.isnan(inp["corr_252d"]) and math.isnan(inp["corr_spike"])
    assert math.isfinite(inp["corr_21d"]) and math.isfinite(inp["realized_vol_21d"])


def test_a_refit_with_its_second_start_in_another_process_is_the_same_fit(sp_returns) -> None:
    """The ``previous`` start on a one-worker process pool (the replay's refits) gives the fit,
    filtered probabilities and log-likelihood of both starts run here, bit for bit."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    first = fit_regime_model(sp_returns.loc["2008-01-01":"2009-06-30"], seed=3)
    later = sp_returns.loc["2008-02-01":"2009-07-31"]
    here = fit_regime_model(later, seed=3, previous=first.fit)
    assert first.fit is not None and here.detail == ""  # two starts, both converged and usable
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        there = fit_regime_model(later, seed=3, previous=first.fit, executor=pool)
    assert here.fit is not None and here.fit == there.fit and here.detail == there.detail
    pd.testing.assert_frame_equal(here.filtered, there.filtered, check_exact=True)
