"""Capital auction (§F): F1a units, peer agreement with skfolio, caps, failures, warm re-solve."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd
import pytest
from skfolio import RiskMeasure
from skfolio.datasets import load_sp500_dataset
from skfolio.measures import cvar as sk_cvar
from skfolio.optimization import MeanRisk, ObjectiveFunction
from skfolio.preprocessing import prices_to_returns

from ais_pipelines.core.auction import (
    DEFAULT_RISK_AVERSION,
    OUTPUT_COLUMNS,
    AuctionParams,
    AuctionSolver,
    run_capital_auction,
)
from ais_pipelines.core.scenarios import Scenarios, scenario_returns


@lru_cache(maxsize=1)
def sp500_simple() -> pd.DataFrame:
    return prices_to_returns(load_sp500_dataset())


def log_returns(end: int | None = None, n: int = 1260) -> pd.DataFrame:
    logr = np.log1p(sp500_simple())
    stop = len(logr) if end is None else end
    return logr.iloc[stop - n : stop]


def candidates_for(mu: pd.Series, cost: float = 0.0, **extra: object) -> pd.DataFrame:
    df = pd.DataFrame(
        {
            "candidate_id": [f"trend:{s}" for s in mu.index],
            "strategy_id": "trend",
            "symbol": list(mu.index),
            "mu_adj": mu.to_numpy(),
            "cost": cost,
        }
    )
    for k, v in extra.items():
        df[k] = v
    return df


def historical_mu(sc: Scenarios) -> pd.Series:
    return pd.Series(sc.probs @ sc.returns, index=sc.symbols)


def codes(result, symbol: str) -> set[str]:  # noqa: ANN001
    row = result.allocations.set_index("symbol").loc[symbol]
    return set(row["reason_codes"].split(";")) if row["reason_codes"] else set()


# --- §F1a: units ---------------------------------------------------------------------------------


def test_default_lambda_gives_nontrivial_book_on_sp500() -> None:
    sc = scenario_returns(log_returns(), horizon=5, lookback=1260)
    res = run_capital_auction(candidates_for(historical_mu(sc)), sc)
    assert res.params.horizon == 5 and res.params.risk_aversion == DEFAULT_RISK_AVERSION
    assert res.status == "OPTIMAL"
    weights = res.allocations["weight"]
    assert (weights > 1e-6).sum() >= 3
    assert weights.sum() > 0.2
    assert res.cvar <= 0.06 + 1e-9  # hard limit (§G4)
    per_symbol = res.allocations.groupby("symbol")["cvar_contribution"].sum()
    assert per_symbol.max() <= 0.01 + 1e-9  # component limit (§G1)
    assert res.objective > 0


def test_daily_horizon_with_lambda_one_allocates_nothing() -> None:
    # The §F1a trap: daily CVaR dwarfs daily μ, so λ = 1 on daily data funds nothing.
    sc = scenario_returns(log_returns(), horizon=1, lookback=1260)
    res = run_capital_auction(
        candidates_for(historical_mu(sc)), sc, params=AuctionParams(horizon=1, risk_aversion=1.0)
    )
    assert res.status == "OPTIMAL"
    assert res.invested < 1e-6
    assert not res.allocations["allocated"].any()
    assert all("ZERO_WEIGHT_AT_OPTIMUM" in c for c in res.allocations["reason_codes"])


def test_horizon_mismatch_is_a_contract_error() -> None:
    sc = scenario_returns(log_returns(n=300), horizon=1, lookback=300)
    with pytest.raises(ValueError, match="horizon"):
        run_capital_auction(candidates_for(historical_mu(sc)), sc)  # auction default H = 5


# --- correctness against skfolio ---------------------------------------------------------------------


PEER = dict(
    cvar_limit=None,
    component_cvar_limit=None,
    budget_equality=True,
    require_positive_mu=False,
)


@pytest.mark.parametrize("lam", [0.1, 1.0, 5.0])
def test_matches_skfolio_mean_cvar_utility(lam: float) -> None:
    x = sp500_simple().iloc[-1260:]
    r = x.to_numpy()
    mu = r.mean(axis=0)
    model = MeanRisk(
        objective_function=ObjectiveFunction.MAXIMIZE_UTILITY,
        risk_measure=RiskMeasure.CVAR,
        risk_aversion=lam,
    ).fit(x)
    params = AuctionParams(horizon=1, risk_aversion=lam, **PEER)
    res = run_capital_auction(candidates_for(pd.Series(mu, index=x.columns)), x, params=params)
    w = res.allocations["weight"].to_numpy()

    def objective(weights: np.ndarray) -> float:
        return float(mu @ weights - lam * sk_cvar(r @ weights, 0.95))

    assert res.status == "OPTIMAL"
    assert w.sum() == pytest.approx(1.0, abs=1e-9)
    assert abs(objective(w) - objective(model.weights_)) < 1e-6
    assert objective(w) >= objective(model.weights_) - 1e-9  # the exact LP vertex is never worse
    assert abs(res.cvar - sk_cvar(r @ w, 0.95)) < 1e-9
    assert res.objective == pytest.approx(objective(w), abs=1e-12)
    assert res.allocations["cvar_contribution"].sum() == pytest.approx(res.cvar, abs=1e-12)


# --- output table (§F2) ---------------------------------------------------------------------------------


def test_output_table_columns_and_contributions() -> None:
    sc = scenario_returns(log_returns(), horizon=5)
    mu = historical_mu(sc)
    cands = candidates_for(mu, cost=0.0005, data_quality_penalty=0.1, model_decay_penalty=0.2)
    res = run_capital_auction(cands, sc)
    out = res.allocations
    assert list(out.columns) == OUTPUT_COLUMNS
    assert len(out) == len(cands)
    assert out["cvar_contribution"].sum() == pytest.approx(res.cvar, abs=1e-12)
    assert out["mu_contribution"].to_numpy() == pytest.approx(out["weight"] * mu.to_numpy())
    assert out["liquidity_cost"].to_numpy() == pytest.approx(out["weight"] * 0.0005)
    assert res.objective == pytest.approx(
        res.expected_return - res.total_cost - DEFAULT_RISK_AVERSION * res.cvar, abs=1e-12
    )
    assert (out["data_quality_penalty"] == 0.1).all() and (out["model_decay_penalty"] == 0.2).all()
    alloc = out[out["allocated"]]
    assert (alloc["decision"] == "ALLOCATED").all()
    assert all("ALLOCATED" in c.split(";") for c in alloc["reason_codes"])
    assert sorted(alloc["rank"].tolist()) == list(range(1, len(alloc) + 1))
    assert alloc["rank"].iloc[alloc["weight"].argmax()] == 1
    assert alloc["correlation"].between(-1, 1).all()
    assert (out.loc[~out["allocated"], "weight"] == 0.0).all()
    book = sc.returns @ out["weight"].to_numpy()
    aapl = sc.returns[:, sc.symbols.index("AAPL")]
    assert out.set_index("symbol").loc["AAPL", "correlation"] == pytest.approx(np.corrcoef(aapl, book)[0, 1])
    summary = res.summary()
    assert summary["n_allocated"] == len(alloc) and summary["horizon"] == 5


# --- caps, eligibility, vetoes ----------------------------------------------------------------------------


def test_caps_bind_and_are_named() -> None:
    sc = scenario_returns(log_returns(), horizon=5)
    mu = historical_mu(sc)
    cands = candidates_for(mu)
    cands["cap_mandate"] = 0.20
    cands["cap_stage"] = 0.05
    cands["cap_liquidity"], cands["cap_quality"], cands["cap_crisis"] = 1.0, 1.0, 1.0
    cands.loc[cands["symbol"] == "LLY", "cap_liquidity"] = 0.02
    cands.loc[cands["symbol"] == "UNH", "cap_quality"] = np.nan  # unknown → fail closed at 0
    cands.loc[cands["symbol"] == "MSFT", "cap_crisis"] = 0.0
    res = run_capital_auction(cands, sc, params=AuctionParams(component_cvar_limit=None))
    out = res.allocations.set_index("symbol")
    assert out.loc["LLY", "weight"] == pytest.approx(0.02, abs=1e-9)
    assert out.loc["LLY", "binding_cap"] == "liquidity"
    assert "CAPPED_BY_LIQUIDITY" in codes(res, "LLY")
    staged = out[(out["binding_cap"] == "stage")]
    assert len(staged) >= 3
    assert np.allclose(staged["weight"], 0.05, atol=1e-9)
    assert all("CAPPED_BY_STAGE" in c for c in staged["reason_codes"])
    assert out.loc["UNH", "weight"] == 0.0 and "CAPPED_BY_DATA_QUALITY" in codes(res, "UNH")
    assert out.loc["MSFT", "weight"] == 0.0 and "CAPPED_BY_CRISIS_SCALING" in codes(res, "MSFT")
    assert "ZERO_WEIGHT_AT_OPTIMUM" not in codes(res, "MSFT")
    assert (out["weight"] <= out["cap"] + 1e-12).all()


def test_component_limit_caps_and_names_component_cvar() -> None:
    sc = scenario_returns(log_returns(), horizon=5)
    res = run_capital_auction(candidates_for(historical_mu(sc)), sc)
    out = res.allocations
    assert res.component_iterations >= 1
    capped = out[out["binding_cap"].str.contains("component_cvar")]
    assert len(capped) >= 1
    assert all("COMPONENT_CVAR_BREACH" in c for c in capped["reason_codes"])
    assert out["cvar_contribution"].max() <= 0.01 + 1e-9


def test_ineligible_candidates_are_vetoed() -> None:
    sc = scenario_returns(log_returns(), horizon=5)
    cands = candidates_for(historical_mu(sc))
    status = {"AAPL": "INVALID_DATA", "MSFT": "INSUFFICIENT_HISTORY", "LLY": "DECOMMISSIONED", "MRK": "???"}
    cands["eligibility"] = cands["symbol"].map(status).fillna("VALID")
    cands.loc[cands["symbol"] == "UNH", "cost"] = np.nan
    cands.loc[cands["symbol"] == "PG", "mu_adj"] = -0.001
    res = run_capital_auction(cands, sc)
    out = res.allocations.set_index("symbol")
    expected = {
        "AAPL": "EXCLUDED_INVALID_DATA",
        "MSFT": "EXCLUDED_INSUFFICIENT_HISTORY",
        "LLY": "EXCLUDED_DECOMMISSIONED",
        "MRK": "EXCLUDED_INVALID_DATA",
        "UNH": "MISSING_IMPACT_ESTIMATE",
    }
    for sym, code in expected.items():
        assert out.loc[sym, "weight"] == 0.0 and out.loc[sym, "vetoed"]
        assert out.loc[sym, "decision"] == "EXCLUDED"
        assert code in codes(res, sym) and out.loc[sym, "veto_reason"].startswith(code)
        assert pd.isna(out.loc[sym, "rank"])
    assert out.loc["PG", "weight"] == 0.0 and not out.loc["PG", "vetoed"]
    assert "NON_POSITIVE_EXPECTED_RETURN" in codes(res, "PG")
    assert res.status == "OPTIMAL" and res.invested > 0.2


def test_all_ineligible_allocates_nothing() -> None:
    sc = scenario_returns(log_returns(), horizon=5)
    cands = candidates_for(historical_mu(sc), eligibility="DECOMMISSIONED")
    res = run_capital_auction(cands, sc)
    assert res.status == "NO_CANDIDATES"
    assert "AUCTION_NO_CANDIDATES" in [str(c) for c in res.reason_codes]
    assert res.invested == 0.0 and res.allocations["vetoed"].all()
    assert (res.allocations["weight"] == 0.0).all()


def test_symbol_missing_from_scenarios_is_excluded() -> None:
    sc = scenario_returns(log_returns(), horizon=5)
    cands = candidates_for(historical_mu(sc))
    extra = cands.iloc[[0]].assign(candidate_id="trend:NEW", symbol="NEW")
    res = run_capital_auction(pd.concat([cands, extra], ignore_index=True), sc)
    row = res.allocations.set_index("symbol").loc["NEW"]
    assert row["vetoed"] and "EXCLUDED_INSUFFICIENT_HISTORY" in row["reason_codes"]


# --- failures are outcomes (§F3) -----------------------------------------------------------------------


def test_infeasible_allocates_nothing() -> None:
    sc = scenario_returns(log_returns(), horizon=5)
    params = AuctionParams(min_investment=0.9, cvar_limit=0.005)
    res = run_capital_auction(candidates_for(historical_mu(sc)), sc, params=params)
    assert res.status == "INFEASIBLE"
    assert "AUCTION_INFEASIBLE" in [str(c) for c in res.reason_codes]
    assert res.invested == 0.0 and not res.allocations["allocated"].any()
    assert all("AUCTION_INFEASIBLE" in c for c in res.allocations["reason_codes"])


def test_solver_crash_is_an_outcome(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(self, problem):  # noqa: ANN001, ARG001
        raise RuntimeError("solver exploded")

    monkeypatch.setattr(AuctionSolver, "_solve", boom)
    sc = scenario_returns(log_returns(), horizon=5)
    res = run_capital_auction(candidates_for(historical_mu(sc)), sc)
    assert res.status == "SOLVER_FAILED"
    assert "AUCTION_SOLVER_FAILED" in [str(c) for c in res.reason_codes]
    assert res.invested == 0.0 and "exploded" in res.message
    assert all("AUCTION_SOLVER_FAILED" in c for c in res.allocations["reason_codes"])


# --- warm re-solve --------------------------------------------------------------------------------------


def test_resolve_next_session_equals_cold_solve() -> None:
    params = AuctionParams()
    n_all = len(sp500_simple())
    state = None
    for end in (n_all - 3, n_all - 2, n_all - 1):
        sc = scenario_returns(log_returns(end=end), horizon=5)
        cands = candidates_for(historical_mu(sc))
        warm = run_capital_auction(cands, sc, params=params, solver_state=state)
        cold = run_capital_auction(cands, sc, params=params)
        assert warm.status == cold.status == "OPTIMAL"
        assert warm.objective == pytest.approx(cold.objective, abs=1e-10)
        assert np.allclose(warm.weights.to_numpy(), cold.weights.to_numpy(), atol=1e-8)
        if state is not None:
            assert warm.warm_started and warm.solver_state is state
        state = warm.solver_state


def test_resolve_with_unrelated_scenarios_falls_back_cold() -> None:
    # A full replacement of the scenario matrix (no key overlap): the old basis does not fit, the
    # solve is cold, says so, and gives the cold answer.
    a = scenario_returns(log_returns(end=4000), horizon=5)
    b = scenario_returns(log_returns(end=6000), horizon=5)
    first = run_capital_auction(candidates_for(historical_mu(a)), a)
    warm = run_capital_auction(candidates_for(historical_mu(b)), b, solver_state=first.solver_state)
    cold = run_capital_auction(candidates_for(historical_mu(b)), b)
    assert not warm.warm_started
    assert "WARM_START_SHAPE_CHANGED" in [str(c) for c in warm.reason_codes]
    assert warm.objective == pytest.approx(cold.objective, abs=1e-10)
