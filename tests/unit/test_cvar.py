"""CVaR core (§G) and scenario generation: numbers against skfolio and hand references."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd
import pytest
from skfolio.datasets import load_sp500_dataset
from skfolio.measures import cvar as sk_cvar
from skfolio.measures import value_at_risk as sk_var
from skfolio.preprocessing import prices_to_returns

from ais_pipelines.core.cvar import (
    breach_scaling,
    order_raises_cvar,
    portfolio_cvar,
    tail_weights,
    var_cvar,
)
from ais_pipelines.core.reason_codes import ReasonCode
from ais_pipelines.core.scenarios import scenario_returns


@lru_cache(maxsize=1)
def sp500_returns() -> pd.DataFrame:
    return prices_to_returns(load_sp500_dataset())


# --- var_cvar ------------------------------------------------------------------------------------


def test_hand_reference_fractional_tail() -> None:
    # Losses 1..10, α = 0.75: tail mass 2.5 scenarios → (10 + 9 + 0.5·8) / 2.5 = 9.2;
    # VaR is the lower 0.75-quantile of the loss: P(L ≤ 8) = 0.8 ≥ 0.75 > P(L ≤ 7).
    losses = np.arange(1.0, 11.0)
    var, cvar = var_cvar(losses, alpha=0.75)
    assert cvar == pytest.approx(9.2, abs=1e-12)
    assert var == pytest.approx(8.0, abs=1e-12)


def test_hand_reference_weighted() -> None:
    # Probabilities 0.1 … : worst loss 10 has p = 0.3, tail mass 0.25 → CVaR = 10.
    losses = np.array([10.0, 5.0, 1.0])
    probs = np.array([0.3, 0.3, 0.4])
    assert var_cvar(losses, 0.75, probs)[1] == pytest.approx(10.0, abs=1e-12)
    # tail mass 0.5: 0.3 at 10 and 0.2 at 5 → (3 + 1) / 0.5 = 8
    assert var_cvar(losses, 0.5, probs)[1] == pytest.approx(8.0, abs=1e-12)


@pytest.mark.parametrize("alpha", [0.9, 0.95, 0.975, 0.99])
@pytest.mark.parametrize("n_obs", [1260, 1256, 1000, 37])
def test_matches_skfolio_equal_weights(alpha: float, n_obs: int) -> None:
    r = sp500_returns().iloc[-n_obs:].to_numpy()
    for j in range(r.shape[1]):
        var, cvar = var_cvar(-r[:, j], alpha)
        assert abs(cvar - sk_cvar(r[:, j], alpha)) < 1e-9
        assert abs(var - sk_var(r[:, j], alpha)) < 1e-9


def test_matches_skfolio_weighted() -> None:
    r = sp500_returns().iloc[-1260:].to_numpy()
    rng = np.random.default_rng(3)
    probs = rng.uniform(0.2, 1.0, size=r.shape[0])
    probs /= probs.sum()
    for j in range(r.shape[1]):
        var, cvar = var_cvar(-r[:, j], 0.95, probs)
        assert abs(cvar - sk_cvar(r[:, j], 0.95, sample_weight=probs)) < 1e-9
        assert abs(var - sk_var(r[:, j], 0.95, sample_weight=probs)) < 1e-9


# --- portfolio CVaR and Euler components ------------------------------------------------------------


def test_portfolio_cvar_and_components() -> None:
    r = sp500_returns().iloc[-1260:].to_numpy()
    w = np.random.default_rng(0).dirichlet(np.ones(r.shape[1]))
    res = portfolio_cvar(w, r)
    assert abs(res.cvar - sk_cvar(r @ w, 0.95)) < 1e-9
    assert abs(res.var - sk_var(r @ w, 0.95)) < 1e-9
    assert res.component.sum() == pytest.approx(res.cvar, abs=1e-12)
    assert np.allclose(res.component, w * res.marginal)
    assert res.tail_weights.sum() == pytest.approx(1.0, abs=1e-12)
    # Marginal CVaR is the gradient (generic weights: the tail set is locally constant).
    h = 1e-7
    for i in (0, 7, 19):
        bump = w.copy()
        bump[i] += h
        fd = (portfolio_cvar(bump, r).cvar - res.cvar) / h
        assert fd == pytest.approx(res.marginal[i], abs=1e-5)


def test_series_weights_align_to_dataframe_columns() -> None:
    frame = sp500_returns().iloc[-500:]
    w = pd.Series({"MSFT": 0.5, "AAPL": 0.5})
    res = portfolio_cvar(w, frame)
    ref = sk_cvar(frame[["MSFT", "AAPL"]].to_numpy() @ np.array([0.5, 0.5]), 0.95)
    assert abs(res.cvar - ref) < 1e-12
    assert res.component[list(frame.columns).index("JNJ")] == 0.0


def test_tied_boundary_shares_mass() -> None:
    # Two identical columns: the Euler split must be symmetric, not decided by sort order.
    r = sp500_returns().iloc[-300:, :1].to_numpy()
    r2 = np.hstack([r, r])
    res = portfolio_cvar(np.array([0.3, 0.3]), r2)
    assert res.component[0] == pytest.approx(res.component[1], abs=1e-15)
    losses = np.array([3.0, 2.0, 2.0, 2.0, 1.0])
    theta = tail_weights(losses, alpha=0.6)  # tail mass 2 scenarios: 3 and one of the 2s
    assert theta[0] == pytest.approx(0.5)
    assert theta[1:4] == pytest.approx(np.full(3, 0.5 / 3))


# --- breach scaling (§G1/§G3) ------------------------------------------------------------------


def test_breach_scaling_portfolio() -> None:
    r = sp500_returns().iloc[-1260:].to_numpy()
    w = np.full(r.shape[1], 1.0 / r.shape[1]) * 3.0  # levered: CVaR well above the limit
    res = portfolio_cvar(w, r)
    dec = breach_scaling(res, limit=0.06, component_limit=None)
    assert dec.portfolio_breach and dec.scale == pytest.approx(0.06 / res.cvar)
    assert ReasonCode.PORTFOLIO_CVAR_BREACH in dec.reason_codes
    assert ReasonCode.SCALED_FOR_CVAR in dec.reason_codes
    # Positive homogeneity: the scaled book sits exactly on the limit.
    assert portfolio_cvar(w * dec.scale, r).cvar == pytest.approx(0.06, abs=1e-12)


def test_breach_scaling_component_and_floor() -> None:
    r = sp500_returns().iloc[-1260:].to_numpy()
    w = np.zeros(r.shape[1])
    w[0] = 0.5  # one big position
    res = portfolio_cvar(w, r)
    dec = breach_scaling(res, limit=1.0, component_limit=0.01)
    assert not dec.portfolio_breach and dec.component_breach[0]
    assert dec.scale == pytest.approx(0.01 / res.component[0])
    assert portfolio_cvar(w * dec.scale, r).component[0] == pytest.approx(0.01, abs=1e-12)
    floored = breach_scaling(res, limit=1.0, component_limit=0.01, min_scale=0.9)
    assert floored.scale == 0.9 and floored.residual_breach
    ok = breach_scaling(portfolio_cvar(w * 0.001, r))
    assert ok.scale == 1.0 and ok.reason_codes == [] and not ok.in_breach


# --- §G3 order check --------------------------------------------------------------------------------


def test_order_raises_cvar() -> None:
    frame = sp500_returns().iloc[-1260:][["AAPL", "MSFT", "XOM"]]
    cur = pd.Series({"AAPL": 0.6, "MSFT": 0.6, "XOM": 0.0})
    tgt = pd.Series({"AAPL": 0.8, "MSFT": 0.3, "XOM": 0.0})
    chk = order_raises_cvar(cur, tgt, frame, limit=0.01)
    assert bool(chk.loc["AAPL", "in_breach"])
    assert chk.loc["AAPL", "raises_cvar"] and chk.loc["AAPL", "blocked"]
    assert chk.loc["AAPL", "reason_codes"] == "ORDER_RAISES_CVAR_IN_BREACH"
    assert not chk.loc["MSFT", "raises_cvar"] and not chk.loc["MSFT", "blocked"]
    assert chk.loc["XOM", "cvar_change"] == 0.0
    # The actual effect equals a direct recomputation.
    only_aapl = cur.copy()
    only_aapl["AAPL"] = 0.8
    expected = portfolio_cvar(only_aapl.to_numpy(), frame.to_numpy()).cvar - chk.attrs["cvar_before"]
    assert chk.loc["AAPL", "cvar_change"] == pytest.approx(expected, abs=1e-12)
    # Not in breach: nothing is blocked.
    relaxed = order_raises_cvar(cur, tgt, frame, limit=1.0)
    assert not relaxed["blocked"].any() and relaxed.loc["AAPL", "raises_cvar"]


# --- scenarios ----------------------------------------------------------------------------------------


def _log_returns() -> pd.DataFrame:
    return np.log1p(sp500_returns())


def test_scenarios_overlapping_windows() -> None:
    logr = _log_returns().iloc[-300:]
    sc = scenario_returns(logr, horizon=5, lookback=252)
    assert sc.returns.shape == (248, 20)
    assert sc.probs == pytest.approx(np.full(248, 1 / 248))
    ref = np.expm1(logr.iloc[-252:].rolling(5).sum().dropna())
    assert np.allclose(sc.returns, ref.to_numpy(), atol=1e-14)
    assert list(sc.end_dates) == list(ref.index)
    assert sc.effective_sample_size() == pytest.approx(248)


def test_scenarios_late_listing_fill_and_drop() -> None:
    logr = _log_returns().iloc[-100:].copy()
    logr.iloc[:10, 0] = np.nan  # AAPL listed 10 sessions late → kept (coverage 0.9)
    logr.iloc[:60, 1] = np.nan  # AMD listed 60 sessions late → dropped (coverage 0.4)
    sc = scenario_returns(logr, horizon=1, lookback=100)
    assert sc.dropped == ["AMD"]
    assert sc.filled_fraction["AAPL"] == pytest.approx(0.1)
    # Filled with the cross-sectional mean of the symbols that do have data that day
    # (computed before AMD is dropped: the fill uses the symbols kept).
    kept = logr.drop(columns=["AMD"])
    proxy = kept.iloc[3].drop("AAPL").mean()
    assert sc.returns[3, sc.symbols.index("AAPL")] == pytest.approx(np.expm1(proxy), abs=1e-15)


def test_scenarios_regime_weighting() -> None:
    logr = _log_returns().iloc[-300:]
    dates = logr.index
    crisis = np.zeros(len(dates))
    crisis[100:150] = 1.0  # a crisis spell in history
    regime = pd.DataFrame({"NORMAL": 1 - crisis, "VOLATILE": 0.0, "CRISIS": crisis}, index=dates)
    sc = scenario_returns(
        logr,
        horizon=5,
        lookback=300,
        weighting="regime",
        regime_probs=regime,
        current_belief={"CRISIS": 1.0},
        regime_tilt=0.5,
    )
    assert sc.probs.sum() == pytest.approx(1.0)
    t = len(sc.probs)
    # Windows starting in the crisis spell carry the tilted mass.
    in_crisis = regime["CRISIS"].reindex(dates[np.clip(np.arange(t) - 1, 0, None)]).to_numpy() == 1.0
    assert sc.probs[in_crisis].sum() == pytest.approx(0.5 + 0.5 * in_crisis.sum() / t)
    assert sc.probs[~in_crisis] == pytest.approx(np.full((~in_crisis).sum(), 0.5 / t))
    flat = scenario_returns(
        logr, horizon=5, lookback=300, weighting="regime", regime_probs=regime, regime_tilt=0.0
    )
    assert flat.probs == pytest.approx(np.full(t, 1 / t))
    with pytest.raises(ValueError):
        scenario_returns(logr, weighting="regime")


def test_scenario_table_is_the_melted_matrix() -> None:
    """``Scenarios.to_long`` (the scenario_returns partition) equals the melt of the matrix with
    each window's probability, row for row and dtype for dtype, on real prices and regime weights."""
    prices = load_sp500_dataset().iloc[-400:, :12]
    log_r = np.log(prices).diff().iloc[1:]
    beliefs = pd.DataFrame({"NORMAL": 0.6, "VOLATILE": 0.3, "CRISIS": 0.1}, index=log_r.index)
    scen = scenario_returns(log_r, horizon=5, lookback=300, weighting="regime", regime_probs=beliefs,
                            current_belief={"NORMAL": 0.2, "VOLATILE": 0.3, "CRISIS": 0.5})
    wide = scen.to_frame()
    melted = wide.rename_axis("scenario_end").reset_index().melt(id_vars="scenario_end", var_name="symbol",
                                                                value_name="ret")
    melted["prob"] = melted["scenario_end"].map(dict(zip(wide.index, scen.probs, strict=True)))
    melted["horizon"] = scen.horizon
    melted["weighting"] = "regime"
    pd.testing.assert_frame_equal(scen.to_long(), melted, check_exact=True)
