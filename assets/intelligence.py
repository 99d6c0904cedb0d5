"""Intelligence layer (§C, §D, §E): features, regime, forecasts, model decay, lifecycle and
candidates — all partitioned by as-of session and point in time (nothing after D is read)."""

import json

import dagster as dg
import numpy as np
import pandas as pd
from dagster_duckdb import DuckDBResource

from ais_pipelines.config import Policies
from ais_pipelines.core import decay as decay_core
from ais_pipelines.core import features as features_core
from ais_pipelines.core import forecasts as forecasts_core
from ais_pipelines.core import regime as regime_core
from ais_pipelines.core.lifecycle import LifecycleParams, LifecycleState, Performance, Stage, step_lifecycle
from ais_pipelines.core.strategies import StrategyDef, generate_candidates
from ais_pipelines.warehouse import read_bars, read_table, replace_partition
from assets._common import md_table
from assets.partitions import as_of_partitions, partition_as_of
from assets.quality import data_quality, read_quality
from resources.policies import PoliciesResource

INTEL = dict(group_name="intelligence", partitions_def=as_of_partitions, kinds={"python", "duckdb"}, pool="duckdb")


def forecast_params(pol: Policies) -> forecasts_core.ForecastParams:
    m = pol.models
    d = m.decay
    return forecasts_core.ForecastParams(
        horizon=m.forecasts.horizon, fit_lookback=m.forecasts.fit_lookback,
        disagreement_beta=m.forecasts.disagreement_beta, strength_full=m.forecasts.strength_full,
        t_dof=m.forecasts.t_dof,
        decay=decay_core.DecayParams(
            full_until_days=d.full_until_days, expire_days=d.expire_days, error_window=d.error_window,
            error_tolerance=d.error_tolerance, error_floor=d.error_floor, autocorr_window=d.autocorr_window,
            flip_factor=d.flip_factor,
        ),
    )


def universe_bars(con, pol: Policies, as_of: pd.Timestamp) -> pd.DataFrame:
    return read_bars(con, [i.symbol for i in pol.universe.symbols], end=as_of)


# --- features -----------------------------------------------------------------------------
@dg.asset(**INTEL, deps=[data_quality],
          description="Per symbol as of D: returns, realized and EWMA volatility, ADV (USD), Corwin–Schultz "
          "spread, distance to the 200-session average, momentum, average correlation, liquidity score.")
def market_features(context: dg.AssetExecutionContext, policies: PoliciesResource,
                    warehouse: DuckDBResource) -> dg.MaterializeResult:
    pol, as_of = policies.load(), partition_as_of(context)
    with warehouse.get_connection() as con:
        bars = universe_bars(con, pol, as_of)
        feats = features_core.compute_market_features(bars, as_of)
        replace_partition(con, "market_features", feats, "as_of", as_of.date())
    return dg.MaterializeResult(metadata={
        "symbols": len(feats),
        "insufficient": int((~feats["features_ok"]).sum()),
        "median_ewma_vol": float(feats["ewma_vol"].median()),
        "median_liquidity_score": float(feats["liquidity_score"].median()),
        "features": md_table(feats[["symbol", "close", "ewma_vol", "adv_usd_20d", "spread_bps_est",
                                    "momentum_12_1", "avg_corr_63d", "liquidity_score", "reason_codes"]]),
    })


# --- regime -------------------------------------------------------------------------------
def _previous_fit(con, as_of: pd.Timestamp) -> regime_core.RegimeFit | None:
    fits = read_table(con, "regime_fits", "as_of < ?", [as_of.date()])
    if fits.empty:
        return None
    return regime_core.RegimeFit.from_dict(json.loads(fits.sort_values("as_of").iloc[-1]["fit_json"]))


@dg.asset(**INTEL, deps=[data_quality],
          description="3-state Markov-switching regime (NORMAL / VOLATILE / CRISIS) on the equal-weight stock "
          "index: transition matrix, filtered beliefs, 5-session regime probabilities, p_crisis_5d from the "
          "matrix (§C2), the §C3 inputs and the §C4 de-risk / reduce-only flags.")
def regime_probabilities(context: dg.AssetExecutionContext, policies: PoliciesResource,
                         warehouse: DuckDBResource) -> dg.MaterializeResult:
    pol, as_of = policies.load(), partition_as_of(context)
    cfg = pol.models.regime
    stocks = [i.symbol for i in pol.universe.symbols if i.resolved_class == "STOCKS"]
    with warehouse.get_connection() as con:
        quality = read_quality(con, as_of)
        valid = set(quality.loc[quality["status"] == "VALID", "symbol"]) if not quality.empty else set()
        bars = read_bars(con, [s for s in stocks if s in valid], end=as_of)
        closes = bars.pivot(index="date", columns="symbol", values="adj_close").sort_index()
        index = regime_core.build_market_index(closes)
        returns = index.pct_change().dropna()
        previous = _previous_fit(con, as_of)
        outcome = regime_core.fit_regime_model(returns, seed=cfg.seed, previous=previous, min_obs=cfg.min_obs)
        inputs = regime_core.regime_inputs(index, np.log(closes).diff(), as_of)
        snap = regime_core.regime_snapshot(
            outcome, as_of, inputs=inputs, threshold=cfg.crisis_threshold, min_scale=cfg.min_exposure_scale
        )
        row = {k: (json.dumps(v) if isinstance(v, list | dict | tuple) else v) for k, v in snap.items()}
        row["transition_json"] = json.dumps(np.asarray(outcome.fit.P).tolist()) if outcome.fit else "null"
        row["index_symbols"] = len(closes.columns)
        replace_partition(con, "regime_probabilities", pd.DataFrame([row]), "as_of", as_of.date())
        if outcome.fit is not None and not outcome.is_fallback:
            replace_partition(con, "regime_fits", pd.DataFrame([{"fit_json": json.dumps(outcome.fit.to_dict())}]),
                              "as_of", as_of.date())
        beliefs = outcome.filtered.rename_axis("date").reset_index()
        beliefs["label"] = outcome.filtered.idxmax(axis=1).to_numpy() if not outcome.filtered.empty else []
        replace_partition(con, "regime_beliefs", beliefs, "as_of", as_of.date())
    trans = pd.DataFrame(np.asarray(outcome.fit.P), index=regime_core.REGIMES, columns=regime_core.REGIMES) \
        if outcome.fit else pd.DataFrame()
    return dg.MaterializeResult(metadata={
        "regime": snap["regime"],
        "p_crisis_5d": float(snap["p_crisis_5d"]),
        "belief_normal": float(np.nan_to_num(snap["belief_normal"])),
        "belief_volatile": float(np.nan_to_num(snap["belief_volatile"])),
        "belief_crisis": float(np.nan_to_num(snap["belief_crisis"])),
        "exposure_scale": float(snap["exposure_scale"]),
        "derisk": bool(snap["derisk"]),
        "reduce_only": bool(snap["reduce_only"]),
        "fail_closed": bool(snap["fail_closed"]),
        "reason_codes": ";".join(snap["reason_codes"]) or "none",
        "transition_matrix": md_table(trans.reset_index(names="from")) if not trans.empty else "none",
    })


@dg.asset_check(asset=regime_probabilities, partitions_def=as_of_partitions,
                description="The regime model fitted (or fell back to the last good fit); a failed fit means CRISIS.")
def regime_fit_ok(context: dg.AssetCheckExecutionContext, warehouse: DuckDBResource) -> dg.AssetCheckResult:
    with warehouse.get_connection() as con:
        row = read_table(con, "regime_probabilities", "as_of = ?", [partition_as_of(context).date()])
    failed = row.empty or bool(row["fail_closed"].iloc[0])
    return dg.AssetCheckResult(
        passed=not failed, severity=dg.AssetCheckSeverity.WARN,
        metadata={"fallback": bool(not row.empty and row["fit_is_fallback"].iloc[0]),
                  "reason_codes": str(row["reason_codes"].iloc[0]) if not row.empty else "no row"},
    )


def read_regime(con, as_of: pd.Timestamp) -> dict:
    row = read_table(con, "regime_probabilities", "as_of = ?", [as_of.date()])
    if row.empty:
        raise dg.Failure(f"no regime_probabilities for {as_of.date()}")
    return row.iloc[0].to_dict()


def _labels(con, as_of: pd.Timestamp) -> pd.Series | None:
    beliefs = read_table(con, "regime_beliefs", "as_of = ?", [as_of.date()])
    if beliefs.empty:
        return None
    return beliefs.set_index(pd.to_datetime(beliefs["date"]))["label"]


# --- models and forecasts -----------------------------------------------------------------
@dg.asset(group_name="models", partitions_def=as_of_partitions, kinds={"python", "duckdb"}, pool="duckdb",
          deps=[regime_probabilities],
          description="Forecast models fitted on history up to D (the fit date). Refitting is its own job, so "
          "model age in the nightly forecasts is real.")
def forecast_models(context: dg.AssetExecutionContext, policies: PoliciesResource,
                    warehouse: DuckDBResource) -> dg.MaterializeResult:
    pol, as_of = policies.load(), partition_as_of(context)
    with warehouse.get_connection() as con:
        bars = universe_bars(con, pol, as_of)
        models = forecasts_core.fit_models(bars, as_of, forecast_params(pol), regime_labels=_labels(con, as_of))
        rows = pd.DataFrame([{"model": m.name, "model_version": m.version, "model_json": m.to_json()}
                             for m in models])
        replace_partition(con, "forecast_models", rows, "fit_date", as_of.date())
    return dg.MaterializeResult(metadata={
        "models": md_table(rows[["model", "model_version"]]), "fit_date": str(as_of.date()),
    })


def load_models(con, as_of: pd.Timestamp) -> list[forecasts_core.FittedModel]:
    table = read_table(con, "forecast_models", "fit_date <= ?", [as_of.date()])
    if table.empty:
        raise dg.Failure(f"no forecast model fitted on or before {as_of.date()}: run model_refit_job for partition "
                         f"{as_of.date()} first (it fits on history up to that session only: point in time)")
    models = [forecasts_core.FittedModel.from_json(j) for j in table["model_json"]]
    return forecasts_core.select_models(models, as_of)


@dg.asset(**INTEL, deps=[market_features, regime_probabilities],
          description="Per symbol and model: a return distribution on the declared horizon (μ, σ, p_loss, "
          "cvar_95, 90 % interval, model version and age); combined μ_adj with the disagreement penalty and "
          "confidence scaled by model decay (§D1–D3).")
def forecasts(context: dg.AssetExecutionContext, policies: PoliciesResource,
              warehouse: DuckDBResource) -> dg.MaterializeResult:
    pol, as_of = policies.load(), partition_as_of(context)
    params = forecast_params(pol)
    with warehouse.get_connection() as con:
        bars = universe_bars(con, pol, as_of)
        models = load_models(con, as_of)
        regime = read_regime(con, as_of)
        probs = {r: float(regime[f"belief_{r.lower()}"]) for r in regime_core.REGIMES}
        if any(np.isnan(v) for v in probs.values()):
            probs = {"NORMAL": 0.0, "VOLATILE": 0.0, "CRISIS": 1.0}  # failed regime: assume the worst
        per_model, combined = forecasts_core.forecast(
            bars, as_of, models, params, probs, regime_labels=_labels(con, as_of)
        )
        replace_partition(con, "forecasts_per_model", per_model, "as_of", as_of.date())
        replace_partition(con, "forecasts", combined, "as_of", as_of.date())
    return dg.MaterializeResult(metadata={
        "symbols": len(combined),
        "positive_mu_adj": int((combined["mu_adj"] > 0).sum()),
        "mean_confidence": float(combined["confidence"].mean()),
        "model_age_days": float(per_model["model_age_days"].max()),
        "mean_decay_factor": float(combined["decay_factor"].mean()),
        "forecasts": md_table(combined[["symbol", "mu", "mu_adj", "sigma", "cvar_95", "p_loss", "confidence",
                                        "decay_factor", "model_age_days", "reason_codes"]]),
    })


@dg.asset(**INTEL, deps=[forecasts],
          description="Per symbol, model and session: model age, age factor, rolling forecast error, "
          "autocorrelation flip and the resulting decay factor (§D3, §D4).")
def model_decay_metrics(context: dg.AssetExecutionContext, policies: PoliciesResource,
                        warehouse: DuckDBResource) -> dg.MaterializeResult:
    pol, as_of = policies.load(), partition_as_of(context)
    params = forecast_params(pol)
    with warehouse.get_connection() as con:
        bars = universe_bars(con, pol, as_of)
        models = load_models(con, as_of)
        table = decay_core.decay_metrics(bars, as_of, models, params.decay, horizon=params.horizon)
        replace_partition(con, "model_decay_metrics", table.drop(columns=["date"], errors="ignore"), "as_of",
                          as_of.date())
    by_model = table.groupby("model")[["age_days", "age_factor", "error_factor", "flip_factor", "decay_factor"]].mean()
    return dg.MaterializeResult(metadata={
        "max_age_days": float(table["age_days"].max()),
        "mean_decay_factor": float(table["decay_factor"].mean()),
        "expired_models": int((table["age_factor"] == 0).sum()),
        "by_model": md_table(by_model.reset_index()),
    })


# --- strategies ---------------------------------------------------------------------------
def lifecycle_params(pol: Policies) -> LifecycleParams:
    lc = pol.strategies.lifecycle
    return LifecycleParams(
        nav_caps={Stage(k): v for k, v in lc.nav_caps.items()},
        **lc.model_dump(exclude={"nav_caps"}),
    )


def strategy_performance(con, strategy_id: str, as_of: pd.Timestamp) -> Performance:
    """Realized paper performance from the ledger copy in the warehouse (none yet → 0 days)."""
    perf = read_table(con, "strategy_performance", "strategy_id = ? AND as_of <= ?", [strategy_id, as_of.date()])
    if perf.empty:
        return Performance(days_evaluated=0)
    last = perf.sort_values("as_of").iloc[-1]
    return Performance(
        days_evaluated=int(last["days_evaluated"]), sharpe=float(last["sharpe"]),
        max_drawdown=float(last["max_drawdown"]), profit_factor=float(last["profit_factor"]),
        error_rate=float(last["error_rate"]),
    )


@dg.asset(**INTEL, deps=[forecasts],
          description="Each strategy's stage (INCUBATING / SCALING / HARVESTING / DECOMMISSIONED), NAV cap "
          "(2 / 5 / 10 / 0 %) and capital multiplier after evidence from realized paper performance (§E2).")
def strategy_lifecycle(context: dg.AssetExecutionContext, policies: PoliciesResource,
                       warehouse: DuckDBResource) -> dg.MaterializeResult:
    pol, as_of = policies.load(), partition_as_of(context)
    params = lifecycle_params(pol)
    rows = []
    with warehouse.get_connection() as con:
        history = read_table(con, "strategy_lifecycle", "as_of < ?", [as_of.date()])
        for spec in pol.strategies.strategies:
            prev = history[history["strategy_id"] == spec.id].sort_values("as_of") if not history.empty else history
            if prev.empty:
                state = LifecycleState(spec.id, Stage.INCUBATING, spec.inception, 1.0, spec.inception)
            else:
                last = prev.iloc[-1]
                state = LifecycleState(spec.id, Stage(last["stage"]), pd.Timestamp(last["stage_since"]).date(),
                                       float(last["capital_multiplier"]), spec.inception)
            decision = step_lifecycle(state, strategy_performance(con, spec.id, as_of), as_of.date(), params)
            rows.append({
                "strategy_id": spec.id, "model": spec.model, "stage": str(decision.state.stage),
                "previous_stage": str(decision.previous_stage), "stage_since": decision.state.stage_since,
                "capital_multiplier": decision.state.capital_multiplier, "nav_cap": decision.nav_cap,
                "effective_cap": decision.effective_cap, "proving": decision.proving,
                "reason_codes": ";".join(sorted(str(c) for c in decision.reason_codes)),
            })
        table = pd.DataFrame(rows)
        replace_partition(con, "strategy_lifecycle", table, "as_of", as_of.date())
    return dg.MaterializeResult(metadata={"strategies": md_table(table)})


@dg.asset(**INTEL, deps=[forecasts, market_features, strategy_lifecycle, data_quality],
          description="Deterministic (strategy × symbol) candidates with μ_adj, risk, liquidity, data quality and "
          "lifecycle stage — the auction's input. Symbols failing the data gates are kept with their status so "
          "the auction records why they got nothing.")
def strategy_candidates(context: dg.AssetExecutionContext, policies: PoliciesResource,
                        warehouse: DuckDBResource) -> dg.MaterializeResult:
    pol, as_of = policies.load(), partition_as_of(context)
    d = as_of.date()
    with warehouse.get_connection() as con:
        per_model = read_table(con, "forecasts_per_model", "as_of = ?", [d])
        combined = read_table(con, "forecasts", "as_of = ?", [d])
        feats = read_table(con, "market_features", "as_of = ?", [d])
        quality = read_quality(con, as_of)
        lifecycle = read_table(con, "strategy_lifecycle", "as_of = ?", [d])
        stages = {r.strategy_id: (r.stage, float(r.effective_cap)) for r in lifecycle.itertuples()}
        specs = [StrategyDef(s.id, s.model, s.min_signal, s.inception) for s in pol.strategies.strategies]
        cands = generate_candidates(specs, per_model, combined, feats, quality, stages, as_of=d,
                                    members=pol.universe.members_on(d))
        cands["asset_class"] = cands["symbol"].map(pol.universe.asset_classes).astype(str)
        cands["sector"] = cands["symbol"].map(pol.universe.sectors)
        replace_partition(con, "strategy_candidates", cands, "as_of", d)
    counts = cands.groupby(["strategy_id", "status"]).size().rename("candidates").reset_index()
    return dg.MaterializeResult(metadata={
        "candidates": len(cands),
        "eligible": int((cands["status"] == "VALID").sum()),
        "by_strategy": md_table(counts),
        "strategies_not_started": ", ".join(s.id for s in pol.strategies.strategies if s.inception > d) or "none",
        "top": md_table(cands.sort_values("mu_adj", ascending=False)[
            ["candidate_id", "mu_adj", "confidence", "status", "stage", "strategy_cap"]], max_rows=20),
    })
