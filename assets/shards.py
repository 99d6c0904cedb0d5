"""Symbol-sharded ingestion and data quality (issue 15): the same asset keys, checks and stage
functions as ``assets/ingestion.py`` and ``assets/quality.py``, each split into K shard ops and a
fan-in op, so the multiprocess executor (or dagster-k8s / dagster-celery) runs the shards in
parallel processes.

Why ops inside graph-backed assets and not a second partition dimension (session × shard):
the as-of partition key stays the one key of every run, schedule, sensor, check and replay;
the shards are an execution detail (a re-run of one failed shard op is a step re-execution),
not a new identity of the data. The shard count is deployment configuration
(``AIS_SYMBOL_SHARDS``); a symbol's shard is a stable hash (``ais_pipelines/shards.py``).

Each shard op writes through ``warehouse.get_connection(shard=k)`` (its own overlay of the
Parquet store); the fan-in opens the main connection, which absorbs the overlays, and records the
materialization. The DuckDB-file store has one writer and is refused for K > 1
(``ais_pipelines/definitions.py``). The shard ops take no run config: the as-of session is the
run's partition (``ais ingest`` and the unsharded asset keep the ``end`` / ``symbols`` options).
"""

import dagster as dg
import pandas as pd
from dagster_duckdb import DuckDBResource

from ais_pipelines.data_stages import (
    QUALITY_TABLE,
    NoIngestionError,
    assess_and_store_quality,
    latest_ingestion,
    store_data_health,
    store_ingestion,
)
from ais_pipelines.ingestion import ingest_universe, row_accounting
from ais_pipelines.shards import ShardPolicies, shard_symbols
from ais_pipelines.warehouse import fetch_one, read_table
from assets._common import ui_table
from assets.ingestion import resolve_end
from assets.partitions import as_of_partitions, partition_as_of
from resources.clock import ClockResource
from resources.market_data import MarketDataResource
from resources.policies import PoliciesResource
from resources.runtime import RuntimeResource


def _universe_symbols(pol) -> list[str]:  # type: ignore[no-untyped-def]
    return [i.symbol for i in pol.universe.symbols]


def _ingest_shard_op(shard: int, shards: int) -> dg.OpDefinition:
    @dg.op(name=f"ingest_shard_{shard}", out=dg.Out(dg.Nothing),  # no pool: shards write concurrently
           description=f"Fetch, archive and stage the bars of symbol shard {shard} of {shards}.")
    def ingest_shard(context: dg.OpExecutionContext, policies: PoliciesResource, market_data: MarketDataResource,
                     warehouse: DuckDBResource, runtime: RuntimeResource, clock: ClockResource) -> None:
        pol = policies.load()
        configured, providers = market_data.providers_for_run(pol)
        end = resolve_end(None, configured, pol, clock, context.run.tags.get("dagster/partition"))
        symbols = shard_symbols(_universe_symbols(pol), shard, shards)
        outcome = ingest_universe(
            policies=pol, providers=providers, configured_provider=configured, entitled=market_data.entitled(pol),
            end=end, archive_dir=runtime.raw_archive_dir(context.run_id), symbols=symbols,
        )
        with warehouse.get_connection(shard=shard) as con:  # type: ignore[call-arg]
            acc = store_ingestion(con, outcome, context.run_id, end)
        context.log.info(f"shard {shard}/{shards}: {len(symbols)} symbols, {acc.stored} rows staged, "
                         f"{acc.rejected} rejected")

    return ingest_shard


@dg.op(name="ingest_fan_in", out=dg.Out(dg.Nothing), pool="duckdb",
       ins={"shards": dg.In(dg.Nothing)},
       description="Absorb the shards' staged bars, rejects and log; fail if no symbol delivered bars.")
def _ingest_fan_in(context: dg.OpExecutionContext, warehouse: DuckDBResource):  # type: ignore[no-untyped-def]
    with warehouse.get_connection() as con:  # the main writer: absorbs every shard's overlay
        log = read_table(con, "ingestion_log", "run_id = ?", [context.run_id])
        rejects = read_table(con, "bar_rejects", "run_id = ?", [context.run_id])
        staged = int(fetch_one(con, "SELECT count(*) FROM staging_bars WHERE run_id = ?", [context.run_id])[0])
    failed = log[log["status"] != "OK"] if not log.empty else log
    if not staged:
        reasons = failed.groupby("reason_code").size().to_dict() if not failed.empty else {}
        raise dg.Failure(description=f"no symbol delivered valid bars: {reasons}")
    acc = row_accounting(log, pd.DataFrame(index=range(staged)), rejects)
    yield dg.Output(None, metadata={
        "as_of": str(pd.to_datetime(log["as_of"]).max().date()),
        "symbols_requested": len(log),
        "symbols_failed": len(failed),
        "rows_read": acc.read,
        "rows_stored": acc.stored,
        "rows_rejected": acc.rejected,
        "rows_accounted": acc.balanced,
        "failed_symbols": ui_table(failed[["symbol", "provider", "reason_code", "detail"]]),
    })


def _quality_shard_op(shard: int, shards: int) -> dg.OpDefinition:
    @dg.op(name=f"quality_shard_{shard}", out=dg.Out(dg.Nothing),  # no pool: shards write concurrently
           ins={"daily_bars": dg.In(dg.Nothing)},
           description=f"§B3–B5 per-symbol quality of symbol shard {shard} of {shards}.")
    def quality_shard(context: dg.OpExecutionContext, policies: PoliciesResource,
                      warehouse: DuckDBResource) -> None:
        pol = policies.load()
        shard_pol = ShardPolicies(pol, shard_symbols(_universe_symbols(pol), shard, shards))
        with warehouse.get_connection(shard=shard) as con:  # type: ignore[call-arg]
            try:
                run = assess_and_store_quality(con, shard_pol, partition_as_of(context), run_id=context.run_id)
            except NoIngestionError as exc:
                raise dg.Failure(str(exc)) from exc
        context.log.info(f"shard {shard}/{shards}: {len(run.table)} symbols assessed")

    return quality_shard


@dg.op(name="quality_fan_in", out=dg.Out(dg.Nothing), pool="duckdb", ins={"shards": dg.In(dg.Nothing)},
       description="Absorb the shards' quality rows; the universe-level data health from all of them.")
def _quality_fan_in(context: dg.OpExecutionContext, policies: PoliciesResource,  # type: ignore[no-untyped-def]
                    warehouse: DuckDBResource):
    pol = policies.load()
    as_of = partition_as_of(context)
    with warehouse.get_connection() as con:
        table = read_table(con, QUALITY_TABLE, "as_of = ?", [as_of.date()])
        ingestion_run = latest_ingestion(con, as_of)
        log = read_table(con, "ingestion_log", "run_id = ?", [ingestion_run])
        health = store_data_health(con, pol, as_of, table.drop(columns=["as_of"]), log)
    missing = sorted(set(_universe_symbols(pol)) - set(table["symbol"]))
    if missing:  # every shard stores a row for each of its symbols; a gap is a lost shard
        raise dg.Failure(f"{len(missing)} universe symbols have no quality row for {as_of.date()}: "
                         f"{', '.join(missing[:10])}")
    from assets.quality import quality_summary

    yield dg.Output(None, metadata=quality_summary(table, health, as_of))


def sharded_data_assets(shards: int) -> list[dg.AssetsDefinition]:
    """``raw_daily_bars`` and ``data_quality`` as K shard ops + a fan-in (same keys and groups)."""
    from assets.ingestion import raw_daily_bars
    from assets.quality import data_quality

    ingest_ops = [_ingest_shard_op(k, shards) for k in range(shards)]
    quality_ops = [_quality_shard_op(k, shards) for k in range(shards)]

    @dg.graph_asset(name="raw_daily_bars", group_name="ingestion", kinds={"python", "duckdb"},
                    description=f"{raw_daily_bars.descriptions_by_key[raw_daily_bars.key]} "
                    f"Run as {shards} symbol shards.")
    def sharded_raw_daily_bars():  # type: ignore[no-untyped-def]
        return _ingest_fan_in(shards=[op() for op in ingest_ops])

    @dg.graph_asset(name="data_quality", group_name="quality", kinds={"python", "duckdb"},
                    partitions_def=as_of_partitions,
                    ins={"daily_bars": dg.AssetIn(key="daily_bars", dagster_type=dg.Nothing)},
                    description=f"{data_quality.descriptions_by_key[data_quality.key]} "
                    f"Run as {shards} symbol shards.")
    def sharded_data_quality(daily_bars):  # type: ignore[no-untyped-def]
        return _quality_fan_in(shards=[op(daily_bars=daily_bars) for op in quality_ops])

    return [sharded_raw_daily_bars, sharded_data_quality]
