"""Data quality (§B3–B5): per-symbol flags, score and the two tradability gates as checks."""

import json
from typing import Any

import dagster as dg
import pandas as pd
from dagster_duckdb import DuckDBResource

from ais_pipelines import nightly
from ais_pipelines.bars_cache import run_bars
from ais_pipelines.core.data_health import describe_breaches
from ais_pipelines.core.reason_codes import ReasonCode
from ais_pipelines.core.schemas import DataQualitySchema
from ais_pipelines.data_stages import (  # noqa: F401  (moved there in issue 13; kept importable from here)
    HEALTH_TABLE,
    QUALITY_TABLE,
    NoIngestionError,
    assess_and_store_quality,
    latest_ingestion,
    quality_params,
    trailing_mean_scores,
)
from ais_pipelines.warehouse import read_table
from assets._common import column_schema, schema_check, symbols_md, ui_table
from assets.ingestion import daily_bars
from assets.partitions import as_of_partitions, partition_as_of
from resources.policies import PoliciesResource
from resources.runtime import RuntimeResource
from resources.trading import LedgerResource

HEALTH_ACTOR = "data_health"


read_quality = nightly.read_quality  # one reader for the checks, the steps and the replay


@dg.asset(
    group_name="quality",
    deps=[daily_bars],
    partitions_def=as_of_partitions,
    kinds={"python", "duckdb"},
    pool="duckdb",
    description="One row per symbol: every §B3 flag count and rate, DATA_QUALITY_SCORE, status "
    "(VALID / INVALID_DATA / INSUFFICIENT_HISTORY) and reason codes. Invalid symbols are stored and "
    "shown but excluded downstream.",
)
def data_quality(
    context: dg.AssetExecutionContext, policies: PoliciesResource, warehouse: DuckDBResource
) -> dg.MaterializeResult:
    pol = policies.load()
    as_of = partition_as_of(context)
    with warehouse.get_connection() as con:
        try:
            run = assess_and_store_quality(con, pol, as_of, run_id=context.run_id)
        except NoIngestionError as exc:
            raise dg.Failure(str(exc)) from exc
    table, health = run.table, run.health
    worst = table.sort_values("data_quality_score").head(15)
    by_flag = run.events.groupby("flag").agg(events=("symbol", "size"), symbols=("symbol", "nunique"),
                                                  first=("session", "min"), last=("session", "max")).reset_index()
    return dg.MaterializeResult(
        metadata={
            "dagster/column_schema": column_schema(table),
            **quality_summary(table, health, as_of),
            "min_score": float(table["data_quality_score"].min()),
            "tradable_share": float(health.metrics["tradable_share"]),
            "provider_failure_rate": float(health.metrics["provider_failure_rate"]),
            "stale_share": float(health.metrics["stale_share"]),
            "mean_quality_drop": float(health.metrics["mean_quality_drop"]),
            "worst_symbols": ui_table(worst[["symbol", "asset_class", "data_quality_score", "status",
                                             "valid_sessions", "reason_codes"]]),
            "flag_events": len(run.events),
            "flag_events_by_flag": ui_table(by_flag),
            "dagster/row_count": len(table),
        }
    )


def quality_summary(table: pd.DataFrame, health: Any, as_of: pd.Timestamp) -> dict[str, Any]:
    """The numbers every data_quality materialization shows (unsharded or a shards' fan-in)."""
    counts = table["status"].value_counts().to_dict()
    return {
        "as_of": str(as_of.date()),
        "symbols": len(table),
        "valid": int(counts.get("VALID", 0)),
        "invalid_data": int(counts.get("INVALID_DATA", 0)),
        "insufficient_history": int(counts.get("INSUFFICIENT_HISTORY", 0)),
        "mean_score": float(table["data_quality_score"].mean()),
        "data_health": "ok" if health.ok else f"{ReasonCode.DATA_HEALTH_BREACH}: {health.summary()}",
        "dagster/row_count": len(table),
    }


def gate_sentence(excluded: list[str], status: str, tradable: int, minimum: int) -> str:
    """What a symbol-level gate's result means, in one sentence (issue 14: WARN is not a halt)."""
    if not excluded:
        return f"Every symbol passed; {tradable} tradable."
    names = ", ".join(excluded[:8]) + (f" and {len(excluded) - 8} more" if len(excluded) > 8 else "")
    n = f"{len(excluded)} symbol{'s' if len(excluded) != 1 else ''}"
    if tradable >= minimum:
        return (f"WARN: {n} excluded ({names}: {status}); they are never traded, the other {tradable} trade "
                f"as usual — nothing is halted.")
    return (f"ERROR: {n} excluded ({names}: {status}) leaves {tradable} tradable, fewer than the {minimum} "
            f"required: nothing downstream runs.")


def _gate_result(table: pd.DataFrame, status: str, minimum: int, label: str) -> dg.AssetCheckResult:
    excluded = table[table["status"] == status]
    tradable = int(table["tradable"].sum())
    # Symbol-level faults exclude the symbol (WARN); a universe with too few tradable symbols
    # is a system-level fault (ERROR, blocks everything downstream).
    enough = tradable >= minimum
    return dg.AssetCheckResult(
        passed=excluded.empty,
        severity=dg.AssetCheckSeverity.WARN if enough else dg.AssetCheckSeverity.ERROR,
        description=gate_sentence(sorted(excluded["symbol"]), status, tradable, minimum),
        metadata={
            "excluded": len(excluded),
            "excluded_symbols": symbols_md(sorted(excluded["symbol"])),
            "tradable_symbols": tradable,
            "min_tradable_symbols": minimum,
            "detail": ui_table(excluded[["symbol", "data_quality_score", "valid_sessions", "reason_codes"]]),
            "gate": label,
        },
    )


@dg.asset_check(asset=data_quality, blocking=True, partitions_def=as_of_partitions,
                description="§B4: DATA_QUALITY_SCORE ≥ 0.6, else INVALID_DATA (excluded, never traded).")
def quality_gate(
    context: dg.AssetCheckExecutionContext, policies: PoliciesResource, warehouse: DuckDBResource
) -> dg.AssetCheckResult:
    with warehouse.get_connection() as con:
        table = read_quality(con, partition_as_of(context))
    return _gate_result(table, "INVALID_DATA", policies.load().quality.gate.min_tradable_symbols, "quality")


@dg.asset_check(asset=data_quality, blocking=True, partitions_def=as_of_partitions,
                description="§B5: ≥ 1260 valid sessions, else INSUFFICIENT_HISTORY (excluded).")
def history_gate(
    context: dg.AssetCheckExecutionContext, policies: PoliciesResource, warehouse: DuckDBResource
) -> dg.AssetCheckResult:
    with warehouse.get_connection() as con:
        table = read_quality(con, partition_as_of(context))
    return _gate_result(table, "INSUFFICIENT_HISTORY", policies.load().quality.gate.min_tradable_symbols, "history")


@dg.asset_check(asset=data_quality, blocking=True, partitions_def=as_of_partitions,
                description="Issue 17: system-level data health within policies/quality.yaml `health` (tradable "
                "share, mean quality drop, provider failure rate, stale share). A breach is a system fault: ERROR, "
                "DATA_HEALTH_BREACH, trading REDUCING or HALTED as declared, audited.")
def data_health_gate(
    context: dg.AssetCheckExecutionContext, policies: PoliciesResource, warehouse: DuckDBResource,
    ledger: LedgerResource,
) -> dg.AssetCheckResult:
    from datetime import UTC, datetime

    from ais_pipelines.core import trading_state as ts

    as_of = partition_as_of(context)
    with warehouse.get_connection() as con:
        table = read_table(con, HEALTH_TABLE, "as_of = ?", [as_of.date()])
    breaches = table[table["breached"].astype(bool)] if len(table) else table
    passed = len(table) > 0 and breaches.empty  # never assessed → fail closed
    summary = describe_breaches(table)
    status_text = "unchanged"
    if not passed:
        mode = policies.load().quality.health.on_breach
        now = datetime.now(UTC)  # the night's wall clock: when the fault was seen
        why = f"data health of {as_of.date()}: {summary or 'never assessed'}"[:2000]
        store = ledger.store()
        status = store.change_trading_status(lambda s: ts.data_health_breach(s, mode=mode, why=why, now=now,
                                                                               actor=HEALTH_ACTOR))
        ledger.audit().append("data_health.breach", HEALTH_ACTOR, f"session:{as_of.date()}",
                              {"why": why, "mode": str(status.mode),
                               "metrics": json.loads(table.drop(columns=["as_of"], errors="ignore").to_json(
                                   orient="records"))},
                              [ReasonCode.DATA_HEALTH_BREACH], now)
        status_text = str(status.mode)
    return dg.AssetCheckResult(
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "reason_code": "none" if passed else str(ReasonCode.DATA_HEALTH_BREACH),
            "breaches": len(breaches),
            "summary": summary or ("within limits" if passed else "never assessed"),
            "trading_mode": status_text,
            "health": ui_table(table.drop(columns=["as_of"], errors="ignore")),
        },
    )


@dg.asset_check(asset=data_quality, blocking=True, partitions_def=as_of_partitions,
                description="The quality table satisfies DataQualitySchema.")
def data_quality_schema(context: dg.AssetCheckExecutionContext, warehouse: DuckDBResource) -> dg.AssetCheckResult:
    with warehouse.get_connection() as con:
        table = read_quality(con, partition_as_of(context))
    return schema_check(DataQualitySchema, table.drop(columns=["as_of"], errors="ignore"), what="data_quality")


@dg.asset(
    group_name="quality",
    deps=[daily_bars, data_quality],
    kinds={"great_expectations"},
    description="Great Expectations Data Docs over the bars and the quality table: the data-quality "
    "report for governance.",
)
def data_quality_report(
    context: dg.AssetExecutionContext, policies: PoliciesResource, warehouse: DuckDBResource,
    runtime: RuntimeResource,
) -> dg.MaterializeResult:
    from ais_pipelines.reports.data_docs import data_docs_from_warehouse

    out = runtime.reports_dir() / "data_docs"
    pol = policies.load()
    with warehouse.get_connection() as con:
        bars = run_bars(con, context.run_id, [i.symbol for i in pol.universe.symbols])
        result = data_docs_from_warehouse(con, pol, out, bars=bars)
    rows = pd.DataFrame([{"suite": k, **v} for k, v in result.suites.items()])
    return dg.MaterializeResult(
        metadata={
            "data_docs": dg.MetadataValue.path(str(result.index_path.resolve())),
            "data_docs_url": dg.MetadataValue.url(result.index_path.resolve().as_uri()),
            "bars_suite_passed": result.success,
            "suites": ui_table(rows),
        }
    )
