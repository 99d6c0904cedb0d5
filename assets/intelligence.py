"""Intelligence layer (§C, §D, §E): features, regime, forecasts, model decay, lifecycle and
candidates — all partitioned by as-of session and point in time (nothing after D is read)."""

import dagster as dg
import numpy as np
import pandas as pd
from dagster_duckdb import DuckDBResource

from ais_pipelines import nightly
from ais_pipelines.core import regime as regime_core
from ais_pipelines.warehouse import read_table
from assets._common import column_schema, stage_failure, ui_table
from assets.partitions import as_of_partitions, partition_as_of
from assets.quality import data_quality
from resources.policies import PoliciesResource

INTEL = dict(group_name="intelligence", partitions_def=as_of_partitions, kinds={"python", "duckdb"}, pool="duckdb")


# One code path (issue 12): the steps live in ais_pipelines.nightly; re-exported for callers.
forecast_params, universe_bars, lifecycle_params = nightly.forecast_params, nightly.universe_bars, nightly.lifecycle_params
strategy_performance, load_models = nightly.strategy_performance, nightly.load_models


def read_regime(con, as_of: pd.Timestamp) -> dict:
    try:
        return nightly.read_regime(con, as_of)
    except nightly.StageInputMissing as exc:
        raise dg.Failure(str(exc)) from exc


# --- features -----------------------------------------------------------------------------
@dg.asset(**INTEL, deps=[data_quality],
          description="Per symbol as of D: returns, realized and EWMA volatility, ADV (USD), Corwin–Schultz "
          "spread, distance to the 200-session average, momentum, average correlation, liquidity score.")
def market_features(context: dg.AssetExecutionContext, policies: PoliciesResource,
                    warehouse: DuckDBResource) -> dg.MaterializeResult:
    pol, as_of = policies.load(), partition_as_of(context)
    with warehouse.get_connection() as con:
        feats = nightly.run_features(con, pol, as_of, run_id=context.run_id)
    return dg.MaterializeResult(metadata={
        "dagster/column_schema": column_schema(feats),
        "symbols": len(feats),
        "insufficient": int((~feats["features_ok"]).sum()),
        "median_ewma_vol": float(feats["ewma_vol"].median()),
        "median_liquidity_score": float(feats["liquidity_score"].median()),
        "features": ui_table(feats[["symbol", "close", "ewma_vol", "adv_usd_20d", "spread_bps_est",
                                    "momentum_12_1", "avg_corr_63d", "liquidity_score", "reason_codes"]]),
    })


# --- regime -------------------------------------------------------------------------------
@dg.asset(**INTEL, deps=[data_quality, dg.AssetKey("macro_series")],  # macro_series: issue 16 (§C3 FRED)
          description="3-state Markov-switching regime (NORMAL / VOLATILE / CRISIS) on the equal-weight stock "
          "index: transition matrix, filtered beliefs, 5-session regime probabilities, p_crisis_5d from the "
          "matrix (§C2), the §C3 inputs and the §C4 de-risk / reduce-only flags.")
def regime_probabilities(context: dg.AssetExecutionContext, policies: PoliciesResource,
                         warehouse: DuckDBResource) -> dg.MaterializeResult:
    pol, as_of = policies.load(), partition_as_of(context)
    with warehouse.get_connection() as con:
        out = nightly.run_regime(con, pol, as_of, run_id=context.run_id)
    snap, outcome = out.snapshot, out.outcome
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
        "refitted": outcome.refitted,
        "reason_codes": ";".join(snap["reason_codes"]) or "none",
        "vix_level": float(np.nan_to_num(snap.get("vix_level", np.nan))),  # issue 16
        "vix_source": str(snap.get("vix_source")),
        "macro_reason_codes": ";".join(snap.get("macro_reason_codes") or []) or "none",
        "transition_matrix": ui_table(trans.reset_index(names="from")) if not trans.empty else "none",
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


# --- models and forecasts -----------------------------------------------------------------
@dg.asset(group_name="models", partitions_def=as_of_partitions, kinds={"python", "duckdb"}, pool="duckdb",
          deps=[regime_probabilities],
          description="Forecast models fitted on history up to D (the fit date). Refitting is its own job, so "
          "model age in the nightly forecasts is real.")
def forecast_models(context: dg.AssetExecutionContext, policies: PoliciesResource,
                    warehouse: DuckDBResource) -> dg.MaterializeResult:
    pol, as_of = policies.load(), partition_as_of(context)
    with warehouse.get_connection() as con:
        rows = nightly.run_model_refit(con, pol, as_of, run_id=context.run_id)
    return dg.MaterializeResult(metadata={
        "models": ui_table(rows[["model", "model_version"]]), "fit_date": str(as_of.date()),
    })


@dg.asset(**INTEL, deps=[market_features, regime_probabilities],
          description="Per symbol and model: a return distribution on the declared horizon (μ, σ, p_loss, "
          "cvar_95, 90 % interval, model version and age); combined μ_adj with the disagreement penalty and "
          "confidence scaled by model decay (§D1–D3).")
def forecasts(context: dg.AssetExecutionContext, policies: PoliciesResource,
              warehouse: DuckDBResource) -> dg.MaterializeResult:
    pol, as_of = policies.load(), partition_as_of(context)
    with warehouse.get_connection() as con, stage_failure():
        out = nightly.run_forecasts(con, pol, as_of, run_id=context.run_id)
    per_model, combined = out.per_model, out.combined
    return dg.MaterializeResult(metadata={
        "dagster/column_schema": column_schema(combined),
        "symbols": len(combined),
        "positive_mu_adj": int((combined["mu_adj"] > 0).sum()),
        "mean_confidence": float(combined["confidence"].mean()),
        "model_age_days": float(per_model["model_age_days"].max()),
        "mean_decay_factor": float(combined["decay_factor"].mean()),
        "forecasts": ui_table(combined[["symbol", "mu", "mu_adj", "sigma", "cvar_95", "p_loss", "confidence",
                                        "decay_factor", "model_age_days", "reason_codes"]]),
    })


@dg.asset(**INTEL, deps=[forecasts],
          description="Per symbol, model and session: model age, age factor, rolling forecast error, "
          "autocorrelation flip and the resulting decay factor (§D3, §D4).")
def model_decay_metrics(context: dg.AssetExecutionContext, policies: PoliciesResource,
                        warehouse: DuckDBResource) -> dg.MaterializeResult:
    pol, as_of = policies.load(), partition_as_of(context)
    with warehouse.get_connection() as con, stage_failure():
        table = nightly.run_decay(con, pol, as_of, run_id=context.run_id)
    by_model = table.groupby("model")[["age_days", "age_factor", "error_factor", "flip_factor", "decay_factor"]].mean()
    return dg.MaterializeResult(metadata={
        "dagster/column_schema": column_schema(table),
        "max_age_days": float(table["age_days"].max()),
        "mean_decay_factor": float(table["decay_factor"].mean()),
        "expired_models": int((table["age_factor"] == 0).sum()),
        "by_model": ui_table(by_model.reset_index()),
    })


# --- strategies ---------------------------------------------------------------------------
@dg.asset(**INTEL, deps=[forecasts],
          description="Each strategy's stage (INCUBATING / SCALING / HARVESTING / DECOMMISSIONED), NAV cap "
          "(2 / 5 / 10 / 0 %) and capital multiplier after evidence from realized paper performance (§E2).")
def strategy_lifecycle(context: dg.AssetExecutionContext, policies: PoliciesResource,
                       warehouse: DuckDBResource) -> dg.MaterializeResult:
    pol, as_of = policies.load(), partition_as_of(context)
    with warehouse.get_connection() as con:
        table = nightly.run_lifecycle(con, pol, as_of)
    return dg.MaterializeResult(metadata={"strategies": ui_table(table), "dagster/column_schema": column_schema(table)})


@dg.asset(**INTEL, deps=[forecasts, market_features, strategy_lifecycle, data_quality],
          description="Deterministic (strategy × symbol) candidates with μ_adj, risk, liquidity, data quality and "
          "lifecycle stage — the auction's input. Symbols failing the data gates are kept with their status so "
          "the auction records why they got nothing.")
def strategy_candidates(context: dg.AssetExecutionContext, policies: PoliciesResource,
                        warehouse: DuckDBResource) -> dg.MaterializeResult:
    pol, as_of = policies.load(), partition_as_of(context)
    with warehouse.get_connection() as con:
        cands = nightly.run_candidates(con, pol, as_of)
    counts = cands.groupby(["strategy_id", "status"]).size().rename("candidates").reset_index()
    return dg.MaterializeResult(metadata={
        "dagster/column_schema": column_schema(cands),
        "candidates": len(cands),
        "eligible": int((cands["status"] == "VALID").sum()),
        "by_strategy": ui_table(counts),
        "strategies_not_started": ", ".join(s.id for s in pol.strategies.strategies if s.inception > as_of.date()) or "none",
        "top": ui_table(cands.sort_values("mu_adj", ascending=False)[
            ["candidate_id", "mu_adj", "confidence", "status", "stage", "strategy_cap"]], max_rows=20),
    })
