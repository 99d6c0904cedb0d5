"""Capital auction and CVaR-first risk (§F, §G, §H1–H2), partitioned by as-of session D:
scenarios → auction → portfolio CVaR (with breach scaling) → order proposals for session D+1."""

import json
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
from dagster_duckdb import DuckDBResource

from ais_pipelines.bars_cache import run_bars
from ais_pipelines.config import Policies
from ais_pipelines.core import auction as auction_core
from ais_pipelines.core import cvar as cvar_core
from ais_pipelines.core import impact as impact_core
from ais_pipelines.core.auction_inputs import auction_inputs, book_nav
from ais_pipelines.core.features import session_aligned_log_returns
from ais_pipelines.core.scenarios import Scenarios, scenario_returns
from ais_pipelines.warehouse import read_table, replace_partition
from assets._common import md_table
from assets.intelligence import read_regime, strategy_candidates
from assets.partitions import as_of_partitions, partition_as_of
from assets.quality import data_quality, read_quality
from resources.policies import PoliciesResource
from resources.runtime import RuntimeResource

RISK = dict(group_name="portfolio", partitions_def=as_of_partitions, kinds={"python", "duckdb"}, pool="duckdb")
ELIGIBLE = "VALID"


def auction_params(pol: Policies, reduce_only: bool = False) -> auction_core.AuctionParams:
    r, a, m = pol.risk, pol.auction, pol.mandate
    return auction_core.AuctionParams(
        horizon=r.horizon_sessions, alpha=r.alpha, risk_aversion=r.risk_aversion,
        cvar_limit=r.portfolio_cvar_limit, component_cvar_limit=r.component_cvar_limit,
        budget=min(r.budget, m.max_gross_exposure), turnover_limit=a.turnover_limit,
        turnover_penalty=a.turnover_penalty_bps / 1e4, impact_segments=a.impact_segments,
        max_component_iterations=a.max_component_iterations, polish_rounds=a.polish_rounds,
        reduce_only=reduce_only,
    )


def current_book(con, as_of: pd.Timestamp, default_nav: float) -> tuple[pd.DataFrame, float | None, float]:
    """(positions, cash, last NAV) as last recorded by the intraday job before D's decision.

    The last ``positions_snapshot`` before D is the book after the session that ended at D's
    close (broker truth, reconciled with the ledger): the as-of-close book, with no broker call.
    """
    pos = read_table(con, "positions_snapshot", "as_of < ?", [as_of.date()])
    pnl = read_table(con, "pnl_history", "as_of < ?", [as_of.date()])
    last_pnl = pnl.sort_values("as_of").iloc[-1] if not pnl.empty else None
    nav = float(last_pnl["nav"]) if last_pnl is not None and "nav" in pnl else default_nav
    cash = float(last_pnl["cash"]) if last_pnl is not None and "cash" in pnl else None
    cols = ["symbol", "qty", "market_value", "mark"]
    if pos.empty:
        return pd.DataFrame({c: pd.Series(dtype=str if c == "symbol" else float) for c in cols}), cash, nav
    last = pos[pos["as_of"] == pos["as_of"].max()]
    return last[[c for c in cols if c in last.columns]].reset_index(drop=True), cash, nav


WARM_DIR = "auction_state"


def load_warm_start(runtime: RuntimeResource, as_of: pd.Timestamp) -> auction_core.WarmStart | None:
    """The basis saved by the latest partition before D (D−1 in a nightly run or a replay)."""
    d = Path(runtime.root) / WARM_DIR
    if not d.is_dir():
        return None
    earlier = sorted(p for p in d.glob("*.npz") if p.stem < as_of.date().isoformat())
    if not earlier:
        return None
    try:
        warm = auction_core.WarmStart.load(earlier[-1])
    except (OSError, ValueError, KeyError):
        return None  # unreadable state only costs a cold solve
    warm.label = earlier[-1].stem  # the partition whose solve produced it
    return warm


def read_scenarios(con, as_of: pd.Timestamp) -> Scenarios:
    long = read_table(con, "scenario_returns", "as_of = ?", [as_of.date()])
    if long.empty:
        raise dg.Failure(f"no scenario_returns for {as_of.date()}")
    wide = long.pivot(index="scenario_end", columns="symbol", values="ret").sort_index()
    probs = long.drop_duplicates("scenario_end").set_index("scenario_end")["prob"].reindex(wide.index).to_numpy()
    return Scenarios(
        returns=wide.to_numpy(dtype=float), probs=probs / probs.sum(), symbols=[str(c) for c in wide.columns],
        end_dates=pd.Index(wide.index), horizon=int(long["horizon"].iloc[0]), lookback=len(wide),
        weighting=str(long["weighting"].iloc[0]),
    )


@dg.asset(**RISK, name="scenario_returns", deps=[data_quality, strategy_candidates],
          description="H-session simple-return scenarios from overlapping windows of the last ~1260 sessions "
          "(point in time), with probabilities (equal, or tilted toward today's regime).")
def scenario_returns_asset(context: dg.AssetExecutionContext, policies: PoliciesResource,
                           warehouse: DuckDBResource) -> dg.MaterializeResult:
    pol, as_of = policies.load(), partition_as_of(context)
    risk = pol.risk
    with warehouse.get_connection() as con:
        quality = read_quality(con, as_of)
        valid = sorted(quality.loc[quality["status"] == ELIGIBLE, "symbol"])
        bars = run_bars(con, context.run_id, valid, end=as_of)
        rets = session_aligned_log_returns(bars, as_of, risk.scenario_lookback)
        belief = None
        if risk.scenario_weighting == "regime":
            reg = read_regime(con, as_of)
            belief = {k: float(reg[f"belief_{k.lower()}"]) for k in ("NORMAL", "VOLATILE", "CRISIS")}
        beliefs = read_table(con, "regime_beliefs", "as_of = ?", [as_of.date()])
        regime_probs = (beliefs.set_index(pd.to_datetime(beliefs["date"]))[["NORMAL", "VOLATILE", "CRISIS"]]
                        if risk.scenario_weighting == "regime" and not beliefs.empty else None)
        scen = scenario_returns(rets, horizon=risk.horizon_sessions, lookback=risk.scenario_lookback,
                                weighting=risk.scenario_weighting, regime_probs=regime_probs, current_belief=belief)
        wide = scen.to_frame()
        long = wide.rename_axis("scenario_end").reset_index().melt(
            id_vars="scenario_end", var_name="symbol", value_name="ret")
        long["prob"] = long["scenario_end"].map(dict(zip(wide.index, scen.probs, strict=True)))
        long["horizon"] = scen.horizon
        long["weighting"] = risk.scenario_weighting
        replace_partition(con, "scenario_returns", long, "as_of", as_of.date())
    eq = wide.mean(axis=1)
    return dg.MaterializeResult(metadata={
        "scenarios": int(wide.shape[0]), "symbols": int(wide.shape[1]), "horizon_sessions": int(scen.horizon),
        "effective_sample_size": float(scen.effective_sample_size()),
        "worst_equal_weight_scenario": float(eq.min()),
        "equal_weight_cvar_95": float(cvar_core.var_cvar(-eq.to_numpy(), risk.alpha, scen.probs)[1]),
    })


CANDIDATE_COLUMNS = ["candidate_id", "strategy_id", "symbol", "mu_adj", "status", "stage", "strategy_cap",
                     "data_quality_score", "decay_factor", "asset_class", "sector"]


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
    d = as_of.date()
    warm_source = ""
    with warehouse.get_connection() as con:
        cands = read_table(con, "strategy_candidates", "as_of = ?", [d])
        regime = read_regime(con, as_of)
        positions, cash, last_nav = current_book(con, as_of, pol.mandate.nav)
        feats = read_table(con, "market_features", "as_of = ?", [d]).set_index("symbol")
        quality = read_quality(con, as_of).set_index("symbol")
        scen = read_scenarios(con, as_of)
        nav = book_nav(positions, feats["close"].to_dict(), cash, last_nav)
        held = positions[positions["qty"].astype(float) != 0] if not positions.empty else positions
        if cands.empty and held.empty:
            table = pd.DataFrame(columns=auction_core.OUTPUT_COLUMNS)
            symbols = pd.DataFrame(columns=auction_core.SYMBOL_COLUMNS)
            summary = {"status": auction_core.STATUS_NO_CANDIDATES, "reason_codes": "AUCTION_NO_CANDIDATES"}
        else:
            if cands.empty:
                cands = pd.DataFrame({c: pd.Series(dtype=float if c in ("mu_adj", "strategy_cap") else str)
                                      for c in CANDIDATE_COLUMNS})
            u, m = pol.universe, pol.mandate
            classes = u.asset_classes
            inputs = auction_inputs(
                cands, feats, held, nav, regime,
                symbol_status=quality["status"].astype(str).to_dict(),
                quality_score=quality["data_quality_score"].astype(float).to_dict(),
                allowed={s: s in classes and m.symbol_allowed(s, classes[s]) for s in set(cands["symbol"]) | set(held["symbol"])},
                sectors=u.sectors, asset_classes={s: str(c) for s, c in classes.items()},
                max_position_weight=m.max_position_weight, max_adv_participation=m.max_adv_participation,
                quality_full_weight=pol.risk.quality_full_weight, max_sector_weight=pol.auction.max_sector_weight,
                sector_caps=pol.auction.sector_caps, asset_class_caps={str(k): v for k, v in pol.auction.asset_class_caps.items()},
            )
            warm = load_warm_start(runtime, as_of) if pol.auction.warm_start else None
            warm_source = warm.label if warm is not None else ""
            result = auction_core.run_capital_auction(
                inputs.candidates, scen, params=auction_params(pol, inputs.reduce_only), book=inputs.book,
                strategy_caps=inputs.strategy_caps, group_caps=inputs.group_caps, warm_start=warm,
            )
            if result.warm_start is not None and result.status == auction_core.STATUS_OPTIMAL:
                result.warm_start.label = d.isoformat()
                result.warm_start.save(runtime.path(WARM_DIR, f"{d.isoformat()}.npz"))
            table, symbols = result.allocations, result.symbols
            summary = {k: (json.dumps(v) if isinstance(v, list | dict) else v) for k, v in result.summary().items()}
            summary["nav"] = nav
            summary["warm_start_source"] = warm_source
        replace_partition(con, "capital_allocations", table, "as_of", d)
        replace_partition(con, "auction_symbols", symbols, "as_of", d)
        replace_partition(con, "auction_summary", pd.DataFrame([summary]), "as_of", d)
    allocated = table[table["weight"] > 0] if not table.empty else table
    return dg.MaterializeResult(metadata={
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
        "symbols": md_table(symbols.sort_values("target_weight", ascending=False)[
            ["symbol", "current_weight", "target_weight", "trade", "decision", "binding_constraint", "reason_codes"]]
            if len(symbols) else symbols, max_rows=40),
        "allocations": md_table(table.sort_values("weight", ascending=False)[
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
        "violations": len(bad), "detail": md_table(bad[["candidate_id", "eligibility", "weight"]]) if len(bad) else "none"})


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
    d, r = as_of.date(), pol.risk
    with warehouse.get_connection() as con:
        sym = read_table(con, "auction_symbols", "as_of = ?", [d])
        scen = read_scenarios(con, as_of)
        # The auction's per-symbol targets include held weight that no candidate claims.
        weights = sym.set_index("symbol")["target_weight"] if not sym.empty else pd.Series(dtype=float)
        weights = weights.reindex(scen.symbols).fillna(0.0)
        res = cvar_core.portfolio_cvar(weights.to_numpy(), scen.returns, r.alpha, scen.probs)
        dec = cvar_core.breach_scaling(res, r.portfolio_cvar_limit, r.component_cvar_limit, r.min_scale)
        comp = pd.DataFrame({
            "symbol": weights.index, "weight": weights.to_numpy(), "target_weight": weights.to_numpy() * dec.scale,
            "component_cvar": res.component, "component_after": res.component * dec.scale,
            "marginal_cvar": res.marginal, "component_breach": dec.component_breach,
        })
        comp = comp[(comp["weight"] > 0)].reset_index(drop=True)
        summary = pd.DataFrame([{
            "var": res.var, "cvar": res.cvar, "cvar_after": dec.cvar_after, "limit": r.portfolio_cvar_limit,
            "component_limit": r.component_cvar_limit, "scale": dec.scale, "portfolio_breach": dec.portfolio_breach,
            "component_breaches": int(dec.component_breach.sum()), "residual_breach": dec.residual_breach,
            "gross_weight": float(weights.sum()), "alpha": r.alpha, "horizon_sessions": r.horizon_sessions,
            "reason_codes": ";".join(sorted(str(c) for c in dec.reason_codes)),
        }])
        replace_partition(con, "portfolio_cvar", summary, "as_of", d)
        replace_partition(con, "portfolio_cvar_components", comp, "as_of", d)
    return dg.MaterializeResult(metadata={
        "var_95": float(res.var), "cvar_95": float(res.cvar), "cvar_after_scaling": float(dec.cvar_after),
        "cvar_limit": r.portfolio_cvar_limit, "scale": float(dec.scale), "positions": len(comp),
        "components": md_table(comp.sort_values("component_after", ascending=False)),
    })


def _read_cvar(con, as_of: pd.Timestamp) -> tuple[pd.DataFrame, pd.DataFrame]:
    d = as_of.date()
    return (read_table(con, "portfolio_cvar", "as_of = ?", [d]),
            read_table(con, "portfolio_cvar_components", "as_of = ?", [d]))


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
    d = as_of.date()
    with warehouse.get_connection() as con:
        _, comp = _read_cvar(con, as_of)
        summary, _ = _read_cvar(con, as_of)
        feats = read_table(con, "market_features", "as_of = ?", [d]).set_index("symbol")
        regime = read_regime(con, as_of)
        scen = read_scenarios(con, as_of)
        book, _, _ = current_book(con, as_of, pol.mandate.nav)
        auction = read_table(con, "auction_summary", "as_of = ?", [d])
        nav = float(auction["nav"].iloc[0]) if "nav" in auction and not auction.empty else pol.mandate.nav
        cands = read_table(con, "strategy_candidates", "as_of = ?", [d])
        # Targets per symbol from the auction (incl. exits of symbols without scenarios), scaled on breach.
        sym = read_table(con, "auction_symbols", "as_of = ?", [d])
        scale = float(summary["scale"].iloc[0]) if not summary.empty else 1.0
        targets = (sym.set_index("symbol")["target_weight"] * scale) if not sym.empty else pd.Series(dtype=float)
        symbols = sorted(set(targets.index) | set(book["symbol"]))
        f = pd.DataFrame({
            "adv_shares": feats["adv_usd_20d"] / feats["close"], "sigma_daily": feats["ewma_vol"],
            "spread_bps": feats["spread_bps_est"],
        }).reindex(symbols)
        in_breach = bool(summary["portfolio_breach"].iloc[0]) if not summary.empty else False
        orders = impact_core.order_proposals(
            targets, book, feats["close"].reindex(symbols), nav, f, regime.get("regime", "CRISIS"), in_breach,
            scenarios=scen.to_frame().reindex(columns=sorted(set(scen.symbols) | set(symbols))).fillna(0.0),
            probs=scen.probs, alpha=pol.risk.alpha, cvar_limit=pol.risk.portfolio_cvar_limit,
            fractional=True, min_notional=pol.mandate.min_order_notional,
        )
        if not cands.empty and not orders.empty:
            best = cands.sort_values("mu_adj", ascending=False).drop_duplicates("symbol").set_index("symbol")
            orders["strategy_id"] = orders["symbol"].map(best["strategy_id"])
            orders["confidence"] = orders["symbol"].map(best["confidence"]).fillna(0.0)
            orders["cvar_95_forecast"] = orders["symbol"].map(best["cvar_95"])
        orders["asset_class"] = orders["symbol"].map(pol.universe.asset_classes).astype(str)
        orders["nav"] = nav
        replace_partition(con, "order_proposals", orders, "as_of", d)
    proposed = orders[orders["status"] == "PROPOSED"] if not orders.empty else orders
    return dg.MaterializeResult(metadata={
        "proposed": len(proposed), "rejected": int(len(orders) - len(proposed)),
        "gross_notional": float(proposed["notional"].abs().sum()) if len(proposed) else 0.0,
        "regime": str(regime.get("regime")), "nav": nav,
        "orders": md_table(orders[["symbol", "side", "qty", "notional", "impact_bps", "style", "status",
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
