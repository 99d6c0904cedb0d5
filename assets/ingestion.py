"""Nightly ingestion (§B1–B2): ``raw_daily_bars`` → ``daily_bars``, with blocking schema checks."""


from datetime import date

import dagster as dg
import pandas as pd
from dagster_duckdb import DuckDBResource

from ais_pipelines.bars_cache import run_bars
from ais_pipelines.core.calendars import last_n_sessions
from ais_pipelines.core.reason_codes import ReasonCode
from ais_pipelines.core.schemas import CanonicalBarsSchema
from ais_pipelines.data_stages import STAGING_TABLE, promote_staged_bars, store_ingestion
from ais_pipelines.ingestion import ingest_universe, row_accounting
from ais_pipelines.warehouse import fetch_one, read_table
from assets._common import schema_check, ui_table
from resources.clock import ClockResource
from resources.market_data import MarketDataResource
from resources.policies import PoliciesResource
from resources.runtime import RuntimeResource


class IngestionConfig(dg.Config):
    """Run config: the as-of session (default: the provider's latest completed session)."""

    end: str | None = None
    symbols: list[str] | None = None


def resolve_end(config_end: str | None, provider: str, policies, clock: ClockResource,
                partition: str | None = None) -> date:
    """Explicit config, else the run's as-of partition, else the provider's latest session."""
    if config_end:
        return pd.Timestamp(config_end).date()
    if partition:
        return pd.Timestamp(partition).date()
    if provider == "sample":
        return policies.providers.sample.end_session
    # Real providers: the last XNYS session that has closed (yesterday's, before the close).
    now = pd.Timestamp(clock.now()).tz_convert("America/New_York")
    return last_n_sessions("XNYS", (now - pd.Timedelta(hours=18)).normalize().tz_localize(None), 1)[0].date()


@dg.asset(
    group_name="ingestion",
    kinds={"python", "duckdb"},
    pool="duckdb",
    description="Daily bars fetched from the configured provider, archived raw, normalized; "
    "rows that fail structural rules are rejected with reason codes (table bar_rejects).",
)
def raw_daily_bars(
    context: dg.AssetExecutionContext,
    config: IngestionConfig,
    policies: PoliciesResource,
    market_data: MarketDataResource,
    warehouse: DuckDBResource,
    runtime: RuntimeResource,
    clock: ClockResource,
) -> dg.MaterializeResult:
    pol = policies.load()
    configured, providers = market_data.providers_for_run(pol)
    end = resolve_end(config.end, configured, pol, clock, context.run.tags.get("dagster/partition"))
    archive = runtime.raw_archive_dir(context.run_id)
    outcome = ingest_universe(
        policies=pol, providers=providers, configured_provider=configured,
        entitled=market_data.entitled(pol), end=end, archive_dir=archive, symbols=config.symbols,
    )
    with warehouse.get_connection() as con:
        accounting = store_ingestion(con, outcome, context.run_id, end)

    failed = outcome.log[outcome.log["status"] != "OK"]
    if outcome.bars.empty:
        # System-level fault: nothing delivered. The log above says why for every symbol.
        reasons = failed.groupby("reason_code").size().to_dict()
        raise dg.Failure(
            description=f"no symbol delivered valid bars (provider {configured}): {reasons}",
            metadata={"failed_symbols": ui_table(failed[["symbol", "provider", "reason_code", "detail"]])},
        )
    by_reason = outcome.rejects.groupby("reason_code").size().rename("rows").reset_index()
    synthetic = any(lin.get("synthetic") for lin in outcome.lineage.values() if isinstance(lin, dict))
    return dg.MaterializeResult(
        metadata={
            "as_of": str(end),
            "provider": configured,
            "synthetic_data": synthetic,
            "lineage": dg.MetadataValue.json(outcome.lineage),
            "symbols_requested": len(outcome.log),
            "symbols_failed": len(failed),
            "rows_valid": len(outcome.bars),
            "rows_rejected": len(outcome.rejects),
            "rows_read": accounting.read,
            "rows_stored": accounting.stored,
            "rows_accounted": accounting.balanced,
            "history_first_date": str(outcome.bars["date"].min().date()),
            "raw_archive": dg.MetadataValue.path(str(archive)),
            "failed_symbols": ui_table(failed[["symbol", "provider", "reason_code", "detail"]]),
            "rejects_by_reason": ui_table(by_reason),
            "per_symbol": ui_table(outcome.log[["symbol", "provider", "status", "rows_received", "rows_valid",
                                                "rows_rejected", "reason_code"]], max_rows=60),
            "seconds_fetch": round(outcome.timings_s.get("fetch", 0.0), 3),
            "seconds_normalize": round(outcome.timings_s.get("normalize", 0.0), 3),
        }
    )


@dg.asset_check(asset=raw_daily_bars, blocking=True, description="Staged bars satisfy CanonicalBarsSchema.")
def raw_bars_schema(warehouse: DuckDBResource) -> dg.AssetCheckResult:
    with warehouse.get_connection() as con:
        frame = read_table(con, STAGING_TABLE)
    if not frame.empty:
        frame = frame.drop(columns=["run_id"])
        frame["date"] = pd.to_datetime(frame["date"]).astype("datetime64[ns]")
    return schema_check(CanonicalBarsSchema, frame, what="staging_bars (this run)")


@dg.asset_check(asset=raw_daily_bars, blocking=True,
                description="Every row read is stored or rejected with a reason code: read = stored + rejected.")
def rows_accounted(context: dg.AssetCheckExecutionContext, warehouse: DuckDBResource) -> dg.AssetCheckResult:
    run_id = context.run.run_id
    with warehouse.get_connection() as con:
        log = read_table(con, "ingestion_log", "run_id = ?", [run_id])
        rejects = read_table(con, "bar_rejects", "run_id = ?", [run_id])
        staged = int(fetch_one(con, f"SELECT count(*) FROM {STAGING_TABLE} WHERE run_id = ?", [run_id])[0])
    acc = row_accounting(log, pd.DataFrame(index=range(staged)), rejects)
    return dg.AssetCheckResult(
        passed=acc.balanced,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "reason_code": "none" if acc.balanced else str(ReasonCode.ROWS_UNACCOUNTED),
            "rows_read": acc.read, "rows_stored": acc.stored, "rows_rejected": acc.rejected,
            "unaccounted": acc.read - acc.stored - acc.rejected,
            "unbalanced_symbols": ", ".join(acc.unbalanced_symbols) or "none",
        },
    )


@dg.asset(
    group_name="ingestion",
    deps=[raw_daily_bars],
    kinds={"duckdb"},
    pool="duckdb",
    description="Canonical validated daily bars with their asset class. Upsert only: stored history is "
    "never deleted, so a bad or partial fetch cannot lose data.",
)
def daily_bars(context: dg.AssetExecutionContext, warehouse: DuckDBResource) -> dg.MaterializeResult:
    with warehouse.get_connection() as con:
        stats, summary, total = promote_staged_bars(con, context.run_id)
    return dg.MaterializeResult(
        metadata={
            "rows_total": total,
            "rows_inserted": stats.inserted,
            "rows_updated": stats.updated,
            "rows_unchanged": stats.unchanged,
            "by_asset_class": ui_table(summary),
            "dagster/row_count": total,
        }
    )


@dg.asset_check(asset=daily_bars, blocking=True, description="Stored bars satisfy CanonicalBarsSchema.")
def daily_bars_schema(context: dg.AssetCheckExecutionContext, warehouse: DuckDBResource) -> dg.AssetCheckResult:
    with warehouse.get_connection() as con:
        frame = run_bars(con, context.run.run_id)  # the run's one read (issue 15), = read_bars(con)
    return schema_check(CanonicalBarsSchema, frame, what="bars (warehouse)")
