"""Impact model, execution style and order proposals (§H1, §H2, §G3, §C4)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ais_pipelines.core.impact import (
    ORDER_COLUMNS,
    REGIME_MULTIPLIERS,
    ExecutionStyle,
    execution_style,
    impact_estimate,
    impact_frame,
    order_proposals,
)


def test_impact_reference_numbers() -> None:
    # 10 000 shares of a $50 stock trading 1 M shares a day, σ = 2 %, spread 4 bps:
    # participation 1 %, temporary = 0.02 · √0.01 · 0.1 · 1e4 = 2 bps, permanent 1 bp,
    # half spread 2 bps, total 5 bps on $500 000 → $250.
    est = impact_estimate(10_000, 50.0, 1_000_000, 0.02, 4.0, "NORMAL")
    assert est["valid"] and est["reason_code"] is None
    assert est["participation"] == pytest.approx(0.01)
    assert est["temporary_bps"] == pytest.approx(2.0)
    assert est["permanent_bps"] == pytest.approx(1.0)
    assert est["half_spread_bps"] == pytest.approx(2.0)
    assert est["total_bps"] == pytest.approx(5.0)
    assert est["impact_cost"] == pytest.approx(250.0)
    # Sells cost the same; regimes multiply every component.
    assert impact_estimate(-10_000, 50.0, 1_000_000, 0.02, 4.0)["total_bps"] == pytest.approx(5.0)
    assert impact_estimate(10_000, 50.0, 1_000_000, 0.02, 4.0, "VOLATILE")["total_bps"] == pytest.approx(7.5)
    crisis = impact_estimate(10_000, 50.0, 1_000_000, 0.02, 4.0, "CRISIS")
    assert crisis["total_bps"] == pytest.approx(12.5) and crisis["regime_multiplier"] == 2.5
    assert REGIME_MULTIPLIERS == {"NORMAL": 1.0, "VOLATILE": 1.5, "CRISIS": 2.5}
    # An unknown regime is treated as CRISIS (fail closed).
    assert impact_estimate(10_000, 50.0, 1_000_000, 0.02, 4.0, "WEIRD")["total_bps"] == pytest.approx(12.5)


@pytest.mark.parametrize(
    "args",
    [
        (100, 50.0, np.nan, 0.02, 4.0),  # no ADV
        (100, 50.0, 0.0, 0.02, 4.0),  # zero ADV
        (100, np.nan, 1e6, 0.02, 4.0),  # no price
        (100, 50.0, 1e6, None, 4.0),  # no volatility
        (100, 50.0, 1e6, 0.02, np.inf),  # broken spread
    ],
)
def test_missing_inputs_have_no_estimate(args: tuple) -> None:
    est = impact_estimate(*args)
    assert not est["valid"]
    assert est["reason_code"] == "MISSING_IMPACT_ESTIMATE"
    assert np.isnan(est["total_bps"])


def test_impact_frame_matches_scalar() -> None:
    df = pd.DataFrame(
        {
            "qty": [10_000, -2_500, 100],
            "price": [50.0, 20.0, 10.0],
            "adv_shares": [1e6, 4e5, np.nan],
            "sigma_daily": [0.02, 0.035, 0.01],
            "spread_bps": [4.0, 10.0, 2.0],
        }
    )
    out = impact_frame(df, "VOLATILE")
    for i, row in df.iterrows():
        est = impact_estimate(*row.tolist(), "VOLATILE")
        if est["valid"]:
            assert out.loc[i, "impact_bps"] == pytest.approx(est["total_bps"])
            assert out.loc[i, "impact_cost"] == pytest.approx(est["impact_cost"])
        else:
            assert not out.loc[i, "impact_valid"] and np.isnan(out.loc[i, "impact_bps"])
    assert out["impact_valid"].tolist() == [True, True, False]


def test_execution_style_by_regime() -> None:
    assert execution_style("NORMAL") is ExecutionStyle.PASSIVE
    assert execution_style("volatile") is ExecutionStyle.SLICED
    assert execution_style("CRISIS") is ExecutionStyle.REDUCE_ONLY
    assert execution_style("UNKNOWN") is ExecutionStyle.REDUCE_ONLY


FEATURES = pd.DataFrame(
    {"adv_shares": [1e6, 2e6, 5e5], "sigma_daily": [0.02, 0.015, 0.03], "spread_bps": [4.0, 2.0, 8.0]},
    index=["AAA", "BBB", "CCC"],
)
PRICES = pd.Series({"AAA": 50.0, "BBB": 100.0, "CCC": 20.0})


def test_order_proposals_normal() -> None:
    targets = pd.Series({"AAA": 0.10, "BBB": 0.02, "CCC": 0.0})
    current = pd.Series({"AAA": 10_000.0, "BBB": 5_000.0, "CCC": 3_000.0})
    out = order_proposals(targets, current, PRICES, 1e7, FEATURES, "NORMAL")
    assert list(out.columns) == ORDER_COLUMNS
    rows = out.set_index("symbol")
    # AAA: target 0.10 × 1e7 / 50 = 20 000 shares, holds 10 000 → buy 10 000.
    assert rows.loc["AAA", "side"] == "BUY" and rows.loc["AAA", "qty"] == 10_000
    assert rows.loc["AAA", "impact_bps"] == pytest.approx(5.0)
    assert rows.loc["AAA", "notional"] == pytest.approx(500_000)
    assert not rows.loc["AAA", "reduce_only"]
    # BBB: target 2 000 shares, holds 5 000 → sell 3 000.
    assert rows.loc["BBB", "side"] == "SELL" and rows.loc["BBB", "qty"] == 3_000
    assert rows.loc["BBB", "reduce_only"]
    # CCC: zero target closes the position exactly.
    assert rows.loc["CCC", "qty"] == 3_000 and rows.loc["CCC", "target_qty"] == 0
    assert (out["status"] == "PROPOSED").all() and (out["style"] == "PASSIVE").all()
    assert out["side"].tolist()[:2] == ["SELL", "SELL"]  # sells first: they free cash


def test_whole_units_unless_fractional() -> None:
    targets = pd.Series({"AAA": 0.0123457})
    whole = order_proposals(targets, None, PRICES, 1e6, FEATURES, "NORMAL")
    assert whole.loc[0, "qty"] == 246.0  # 246.914 → toward zero
    frac = order_proposals(targets, None, PRICES, 1e6, FEATURES, "NORMAL", fractional=True)
    assert frac.loc[0, "qty"] == pytest.approx(246.914)


def test_crisis_is_reduce_only() -> None:
    targets = pd.Series({"AAA": 0.10, "BBB": 0.02})
    current = pd.Series({"AAA": 10_000.0, "BBB": 5_000.0})
    out = order_proposals(targets, current, PRICES, 1e7, FEATURES, "CRISIS").set_index("symbol")
    assert out.loc["AAA", "status"] == "REJECTED"
    assert "CRISIS_REGIME" in out.loc["AAA", "reason_codes"]
    assert out.loc["BBB", "status"] == "PROPOSED" and out.loc["BBB", "reduce_only"]
    assert "REDUCE_ONLY" in out.loc["BBB", "reason_codes"]
    assert (out["style"] == "REDUCE_ONLY").all()
    assert out.loc["BBB", "impact_bps"] == pytest.approx(
        impact_estimate(3_000, 100.0, 2e6, 0.015, 2.0, "CRISIS")["total_bps"]
    )


def test_missing_impact_estimate_rejects_the_order() -> None:
    targets = pd.Series({"AAA": 0.05, "ZZZ": 0.05})
    prices = pd.concat([PRICES, pd.Series({"ZZZ": 10.0})])
    out = order_proposals(targets, None, prices, 1e6, FEATURES, "NORMAL").set_index("symbol")
    assert out.loc["ZZZ", "status"] == "REJECTED"
    assert out.loc["ZZZ", "reason_codes"] == "MISSING_IMPACT_ESTIMATE"
    assert out.loc["AAA", "status"] == "PROPOSED"


def test_breach_blocks_orders_that_raise_cvar() -> None:
    rng = np.random.default_rng(5)
    market = rng.standard_t(4, 500) * 0.02
    scen = pd.DataFrame(
        {"AAA": market + rng.normal(0, 0.005, 500), "BBB": -0.8 * market + rng.normal(0, 0.005, 500)}
    )
    current = pd.Series({"AAA": 20_000.0, "BBB": 0.0})  # 100 % in AAA: CVaR far above 0.01
    targets = pd.Series({"AAA": 1.2, "BBB": 0.1})
    out = order_proposals(
        targets, current, PRICES, 1e6, FEATURES, "NORMAL", in_breach=True, scenarios=scen, cvar_limit=0.01
    ).set_index("symbol")
    assert out.loc["AAA", "status"] == "REJECTED"
    assert "ORDER_RAISES_CVAR_IN_BREACH" in out.loc["AAA", "reason_codes"]
    assert out.loc["AAA", "cvar_change"] > 0
    # Buying the hedge lowers CVaR, so it is allowed even in breach.
    assert out.loc["BBB", "status"] == "PROPOSED" and out.loc["BBB", "cvar_change"] < 0
    # Without scenarios only position-reducing orders pass.
    proxy = order_proposals(targets, current, PRICES, 1e6, FEATURES, "NORMAL", in_breach=True)
    assert (proxy["status"] == "REJECTED").all()


def test_targets_from_auction_table() -> None:
    alloc = pd.DataFrame({"symbol": ["AAA", "AAA", "BBB"], "weight": [0.03, 0.02, 0.0]})
    out = order_proposals(alloc, None, PRICES, 1e6, FEATURES, "VOLATILE")
    assert len(out) == 1 and out.loc[0, "symbol"] == "AAA"
    assert out.loc[0, "qty"] == 1_000 and out.loc[0, "style"] == "SLICED"
    assert out.loc[0, "regime_multiplier"] == 1.5


@pytest.mark.parametrize("regime", ["NORMAL", "VOLATILE", "CRISIS"])
def test_trade_cost_coefficients_reproduce_the_order_impact(regime: str) -> None:
    # The auction's v·(a + k√v) in weights is the §H1 impact of the order of that size.
    from ais_pipelines.core.impact import trade_cost_coefficients

    nav, price, adv, sigma, spread = 1e6, 50.0, 20_000.0, 0.02, 8.0
    a, k = trade_cost_coefficients(nav, price, adv, sigma, spread, regime)
    for v in (1e-4, 0.01, 0.05):
        est = impact_estimate(v * nav / price, price, adv, sigma, spread, regime)
        assert v * (a + k * np.sqrt(v)) * nav == pytest.approx(est["impact_cost"], rel=1e-12)
    a_bad, k_bad = trade_cost_coefficients(nav, price, np.nan, sigma, spread, regime)
    assert np.isnan(a_bad) and np.isnan(k_bad)
