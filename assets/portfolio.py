"""Capital auction and CVaR-first risk (§F, §G, §H1–H2), partitioned by as-of session D:
scenarios → auction → portfolio CVaR (with breach scaling) → order proposals for session D+1."""

from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
from dagster_duckdb import DuckDBResource

from ais_pipelines import nightly
from ais_pipelines.core import auction as auction_core
from ais_pipelines.core import cvar as cvar_core
from ais_pipelines.core.scenarios import Scenarios
from ais_pipelines.warehouse import read_table
from assets._common import column_schema, stage_failure, ui_table
from assets.intelligence import read_regime, strategy_candidates
from assets.partitions import as_of_partitions, partition_as_of
from assets.quality import data_quality
from resources.policies import PoliciesResource
from resources.runtime import RuntimeResource

RISK = dict(group_name="portfolio", partitions_def=as_of_partitions, kinds={"python", "duckdb"}, pool="duckdb")
ELIGIBLE = "VALID"


# One code path (issue 12): the steps live in ais_pipelines.nightly; re-exported for callers.
auction_params, current_book, WARM_DIR = nightly.auction_params, nightly.current_book, nightly.WARM_DIR
CANDIDATE_COLUMNS = nightly.CANDIDATE_COLUMNS


def load_warm_start(runtime: RuntimeResource, as_of: pd.Timestamp) -> auction_core.WarmStart | None:
    """The basis saved by the latest partition before D (D−1 in a nightly run or a replay)."""
    return nightly.load_warm_start(Path(runtime.root) / WARM_DIR, as_of)


def read_scenarios(con, as_of: pd.Timestamp) -> Scenarios:
    try:
        return nightly.read_scenarios(con, as_of)
    except nightly.StageInputMissing as exc:
        raise dg.Failure(str(exc)) from exc


@dg.asset(**RISK, name="scenario_returns", deps=[data_quality, strategy_candidates],
          description="H-session simple-return scenarios from overlapping windows of the last ~1260 sessions "
          "(point in time), with probabilities (equal, or tilted toward today's regime).")
def scenario_returns_asset(context: dg.AssetExecutionContext, policies: PoliciesResource,
                           warehouse: DuckDBResource) -> dg.MaterializeResult:
    pol, as_of = policies.load(), partition_as_of(context)
    risk = pol.risk
    with warehouse.get_connection() as con, stage_failure():
        out = nightly.run_scenarios(con, pol, as_of, run_id=context.run_id)
    scen, wide = out.scenarios, out.wide
    eq = wide.mean(axis=1)
    return dg.MaterializeResult(metadata={
        "scenarios": int(wide.shape[0]), "symbols": int(wide.shape[1]), "horizon_sessions": int(scen.horizon),
        "effective_sample_size": float(scen.effective_sample_size()),
        "worst_equal_weight_scenario": float(eq.min()),
        "equal_weight_cvar_95": float(cvar_core.var_cvar(-eq.to_numpy(), risk.alpha, scen.probs)[1]),
    })


@dg.asset(**RISK, deps=[scenario_returns_asset, strategy_candidates],
          description="The capital auction (§F): one holdings-aware LP, max Σ x·μ_adj − trade costs − λ·CVaR₉₅(w) "
          "(Rockafellar–Uryasev, HiGHS), starting from the book held at D's close: §H1 impact on the trade "
          "|w − w_now| (convex, piecewise linear), exact caps per symbol across strategies, per strategy (stage), "
          "per sector / asset class and gross, ADV participation on the trade, a daily turnover limit, reduce-only "
          "in crisis or CVaR breach, portfolio CVaR ≤ limit, component CVaR ≤ limit; exits of ineligible holdings "
          "as decisions. Tables capital_allocations (per candidate), auction_symbols (per symbol: target, trade, "
          "binding constraint), auction_summary. Warm-started from D−1's basis.")
def capital_auction(context: dg.AssetExecutionContext, policies: PoliciesResource,
                    warehouse: DuckDBResource, runtime: RuntimeResource) -> dg.MaterializeResult:
    pol, as_of = policies.load(), partition_as_of(context)
    with warehouse.get_connection() as con, stage_failure():
        out = nightly.run_auction(con, pol, as_of, Path(runtime.root) / WARM_DIR)
    table, symbols, summary, warm_source = out.allocations, out.symbols, out.summary, out.warm_source
    allocated = table[table["weight"] > 0] if not table.empty else table
    return dg.MaterializeResult(metadata={
        "dagster/column_schema": column_schema(table),
        "status": str(summary.get("status")),
        "candidates": len(table),
        "allocated": len(allocated),
        "invested_weight": float(symbols["target_weight"].sum()) if len(symbols) else 0.0,
        "expected_return": float(summary.get("expected_return", 0.0) or 0.0),
        "portfolio_cvar": float(summary.get("cvar", 0.0) or 0.0),
        "turnover": float(summary.get("turnover", 0.0) or 0.0),
        "trade_cost": float(summary.get("total_cost", 0.0) or 0.0),
        "solve_seconds": float(summary.get("solve_time_s", 0.0) or 0.0),
        "warm_started": bool(summary.get("warm_started", False)),
        "warm_start_source": warm_source or "none",
        "reason_codes": str(summary.get("reason_codes", "")),
        "symbols": ui_table(symbols.sort_values("target_weight", ascending=False)[
            ["symbol", "current_weight", "target_weight", "trade", "decision", "binding_constraint", "reason_codes"]]
            if len(symbols) else symbols, max_rows=40),
        "allocations": ui_table(table.sort_values("weight", ascending=False)[
            ["candidate_id", "weight", "rank", "decision", "binding_cap", "mu_adj", "cvar_contribution",
             "reason_codes"]] if len(table) else table, max_rows=40),
    })


@dg.asset_check(asset=capital_auction, blocking=True, partitions_def=as_of_partitions,
                description="No capital to INVALID_DATA, INSUFFICIENT_HISTORY or DECOMMISSIONED candidates.")
def no_allocation_to_ineligible(context: dg.AssetCheckExecutionContext,
                                warehouse: DuckDBResource) -> dg.AssetCheckResult:
    with warehouse.get_connection() as con:
        table = read_table(con, "capital_allocations", "as_of = ?", [partition_as_of(context).date()])
    bad = table[(table["eligibility"] != ELIGIBLE) & (table["weight"] > 0)] if not table.empty else table
    return dg.AssetCheckResult(passed=bad.empty, metadata={
        "violations": len(bad), "detail": ui_table(bad[["candidate_id", "eligibility", "weight"]]) if len(bad) else "none"})


@dg.asset_check(asset=capital_auction, partitions_def=as_of_partitions,
                description="The auction solved (an infeasible or failed solve allocates nothing: WARN).")
def auction_solved(context: dg.AssetCheckExecutionContext, warehouse: DuckDBResource) -> dg.AssetCheckResult:
    with warehouse.get_connection() as con:
        s = read_table(con, "auction_summary", "as_of = ?", [partition_as_of(context).date()])
    status = str(s["status"].iloc[0]) if not s.empty else "MISSING"
    return dg.AssetCheckResult(passed=status == auction_core.STATUS_OPTIMAL, severity=dg.AssetCheckSeverity.WARN,
                               metadata={"status": status})


@dg.asset_check(asset=capital_auction, blocking=True, partitions_def=as_of_partitions,
                description="§F0: every symbol's total across strategies ≤ its cap, every strategy's total ≤ its "
                "stage cap, every trade ≤ its ADV participation cap.")
def auction_caps_hold(context: dg.AssetCheckExecutionContext, warehouse: DuckDBResource) -> dg.AssetCheckResult:
    d = partition_as_of(context).date()
    with warehouse.get_connection() as con:
        sym = read_table(con, "auction_symbols", "as_of = ?", [d])
        alloc = read_table(con, "capital_allocations", "as_of = ?", [d])
        cands = read_table(con, "strategy_candidates", "as_of = ?", [d])
    bad_sym = sym[sym["target_weight"] > sym["cap"] + 1e-9] if not sym.empty else sym
    bad_trade = sym[sym["trade"].abs() > sym["trade_cap"].fillna(0.0) + 1e-9] if not sym.empty else sym
    over = 0
    if not alloc.empty and not cands.empty:
        totals = alloc.groupby("strategy_id")["weight"].sum()
        caps = cands.groupby("strategy_id")["strategy_cap"].first().reindex(totals.index)
        over = int((totals > caps + 1e-9).sum())
    return dg.AssetCheckResult(passed=bad_sym.empty and bad_trade.empty and over == 0, metadata={
        "symbols_over_cap": len(bad_sym), "trades_over_participation": len(bad_trade), "strategies_over_cap": over})


@dg.asset(**RISK, deps=[capital_auction],
          description="Portfolio VaR / CVaR₉₅ of the target book and each position's Euler component; while in "
          "breach every position is scaled down (§G3).")
def portfolio_cvar(context: dg.AssetExecutionContext, policies: PoliciesResource,
                   warehouse: DuckDBResource) -> dg.MaterializeResult:
    pol, as_of = policies.load(), partition_as_of(context)
    r = pol.risk
    with warehouse.get_connection() as con, stage_failure():
        out = nightly.run_portfolio_cvar(con, pol, as_of)
    res, dec, comp = out.result, out.decision, out.components
    return dg.MaterializeResult(metadata={
        "dagster/column_schema": column_schema(out.summary),
        "var_95": float(res.var), "cvar_95": float(res.cvar), "cvar_after_scaling": float(dec.cvar_after),
        "cvar_limit": r.portfolio_cvar_limit, "scale": float(dec.scale), "positions": len(comp),
        "components": ui_table(comp.sort_values("component_after", ascending=False)),
    })


_read_cvar = nightly.read_cvar


@dg.asset_check(asset=portfolio_cvar, blocking=True, partitions_def=as_of_partitions,
                description="§G4: portfolio CVaR (after breach scaling) ≤ its limit.")
def portfolio_cvar_within_limit(context: dg.AssetCheckExecutionContext,
                                warehouse: DuckDBResource) -> dg.AssetCheckResult:
    with warehouse.get_connection() as con:
        s, _ = _read_cvar(con, partition_as_of(context))
    ok = not s.empty and float(s["cvar_after"].iloc[0]) <= float(s["limit"].iloc[0]) + 1e-9
    return dg.AssetCheckResult(passed=ok, metadata={
        "cvar_after": float(s["cvar_after"].iloc[0]) if not s.empty else float("nan"),
        "limit": float(s["limit"].iloc[0]) if not s.empty else float("nan")})


@dg.asset_check(asset=portfolio_cvar, blocking=True, partitions_def=as_of_partitions,
                description="§G4: every position's component CVaR (after scaling) ≤ its limit.")
def component_cvar_within_limit(context: dg.AssetCheckExecutionContext,
                                warehouse: DuckDBResource) -> dg.AssetCheckResult:
    with warehouse.get_connection() as con:
        s, comp = _read_cvar(con, partition_as_of(context))
    limit = float(s["component_limit"].iloc[0]) if not s.empty else 0.0
    bad = comp[comp["component_after"] > limit + 1e-9] if not comp.empty else comp
    return dg.AssetCheckResult(passed=not s.empty and bad.empty, metadata={
        "limit": limit, "violations": len(bad),
        "max_component": float(comp["component_after"].max()) if not comp.empty else 0.0})


@dg.asset(**RISK, deps=[portfolio_cvar],
          description="Orders that move the current book to the (scaled) targets for session D+1, each with the "
          "§H1 impact estimate and the §H2 execution style; crisis → reduce-only; in breach → no order may "
          "raise CVaR.")
def order_proposals(context: dg.AssetExecutionContext, policies: PoliciesResource,
                    warehouse: DuckDBResource) -> dg.MaterializeResult:
    pol, as_of = policies.load(), partition_as_of(context)
    with warehouse.get_connection() as con, stage_failure():
        out = nightly.run_order_proposals(con, pol, as_of)
    orders, regime, nav = out.orders, out.regime, out.nav
    proposed = orders[orders["status"] == "PROPOSED"] if not orders.empty else orders
    return dg.MaterializeResult(metadata={
        "dagster/column_schema": column_schema(orders),
        "proposed": len(proposed), "rejected": int(len(orders) - len(proposed)),
        "gross_notional": float(proposed["notional"].abs().sum()) if len(proposed) else 0.0,
        "regime": str(regime.get("regime")), "nav": nav,
        "orders": ui_table(orders[["symbol", "side", "qty", "notional", "impact_bps", "style", "status",
                                   "reason_codes"]] if len(orders) else orders, max_rows=40),
    })


@dg.asset_check(asset=order_proposals, blocking=True, partitions_def=as_of_partitions,
                description="§H1: every proposed order carries an impact estimate.")
def orders_have_impact_estimates(context: dg.AssetCheckExecutionContext,
                                 warehouse: DuckDBResource) -> dg.AssetCheckResult:
    with warehouse.get_connection() as con:
        o = read_table(con, "order_proposals", "as_of = ?", [partition_as_of(context).date()])
    prop = o[o["status"] == "PROPOSED"] if not o.empty else o
    bad = prop[~np.isfinite(prop["impact_bps"].astype(float))] if len(prop) else prop
    return dg.AssetCheckResult(passed=bad.empty, metadata={"proposed": len(prop), "without_impact": len(bad)})


@dg.asset_check(asset=order_proposals, blocking=True, partitions_def=as_of_partitions,
                description="§G3/§C4: in breach no proposal raises CVaR; in CRISIS proposals are reduce-only.")
def proposals_respect_risk_state(context: dg.AssetCheckExecutionContext,
                                 warehouse: DuckDBResource) -> dg.AssetCheckResult:
    as_of = partition_as_of(context)
    with warehouse.get_connection() as con:
        o = read_table(con, "order_proposals", "as_of = ?", [as_of.date()])
        regime = read_regime(con, as_of)
        s, _ = _read_cvar(con, as_of)
    prop = o[o["status"] == "PROPOSED"] if not o.empty else o
    crisis_bad = prop[~prop["reduce_only"].astype(bool)] if (len(prop) and regime.get("reduce_only")) else prop.iloc[0:0]
    breach = bool(s["portfolio_breach"].iloc[0]) if not s.empty else False
    breach_bad = prop[prop["cvar_change"].astype(float) > 1e-12] if (len(prop) and breach) else prop.iloc[0:0]
    return dg.AssetCheckResult(passed=crisis_bad.empty and breach_bad.empty, metadata={
        "reduce_only_regime": bool(regime.get("reduce_only")), "in_breach": breach,
        "violations": len(crisis_bad) + len(breach_bad)})
