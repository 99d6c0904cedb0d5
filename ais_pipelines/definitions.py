"""The code location: one factory assembles assets, checks, jobs, schedules, sensors and the
resources of the chosen environment (local / ci / prod). Nothing is decided at import time.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import dagster as dg
from dagster_duckdb import DuckDBResource

from ais_pipelines.config import Policies

ENVIRONMENTS = ("local", "ci", "prod")
# Issue 15: jobs that write the DuckDB warehouse carry this tag; the service profile's
# QueuedRunCoordinator (ais_pipelines/service/dagster.service.yaml) runs one of them at a time per value.
WAREHOUSE_WRITER_TAG = {"ais/warehouse": "main"}
NIGHTLY_GROUPS = ("ingestion", "quality", "intelligence", "portfolio")  # what nightly_job materializes


# --- issue 15: the warehouse store and symbol shards, chosen per environment --------------------
# AIS_WAREHOUSE_STORE=duckdb (default; the file AIS_WAREHOUSE or runtime/warehouse.duckdb) or parquet
# (the directory AIS_WAREHOUSE or runtime/warehouse_parquet, several writers). AIS_SYMBOL_SHARDS=K > 1
# splits ingestion and data quality into K parallel shard steps (parquet store only); docs/deployment.md.
def warehouse_resource(root: Path) -> DuckDBResource:
    from ais_pipelines.warehouse_location import configured_store, default_location
    from resources.warehouse import WarehouseResource

    store = configured_store()
    return WarehouseResource(database=os.environ.get("AIS_WAREHOUSE", str(default_location(root, store))), store=store)


def symbol_shards() -> int:
    raw = os.environ.get("AIS_SYMBOL_SHARDS", "1")
    try:
        shards = int(raw)
    except ValueError:
        shards = 0
    if shards < 1:
        raise ValueError(f"AIS_SYMBOL_SHARDS must be a whole number >= 1, got {raw!r}")
    from ais_pipelines.warehouse_location import configured_store

    if shards > 1 and configured_store() != "parquet":
        raise ValueError(f"AIS_SYMBOL_SHARDS={shards} needs AIS_WAREHOUSE_STORE=parquet: the DuckDB file has one "
                         "writer, and shards write concurrently")
    return shards


def nightly_executor(shards: int) -> dg.ExecutorDefinition:
    """Unsharded: in process (one writer). Sharded: the multiprocess executor, K step processes at a
    time (the shards of a stage run side by side; main writers queue on the store's lock)."""
    if shards == 1:
        return dg.in_process_executor
    # forkserver with the code location preloaded: a step process starts in 2-5 s (fork, definitions)
    # instead of also re-importing dagster-dbt, pandas, exchange_calendars, … (~6 s of CPU per step)
    preload = ["ais_pipelines.definitions", *(f"assets.{m}" for m in PRELOADED_ASSET_MODULES), "sensors.execution"]
    return dg.multiprocess_executor.configured(
        {"max_concurrent": shards, "start_method": {"forkserver": {"preload_modules": preload}}},
        name="sharded_multiprocess")


PRELOADED_ASSET_MODULES = ("ingestion", "quality", "shards", "intelligence", "portfolio", "execution", "reporting",
                           "reasoning", "macro", "control", "replay")
# --- end issue 15 ---------------------------------------------------------------------------


def resources_for(env: str, runtime_root: str) -> dict[str, object]:
    """Environment → resources, as data. prod differs only by where things live and who trades."""
    from resources.clock import ClockResource
    from resources.market_data import MarketDataResource
    from resources.policies import PoliciesResource
    from resources.runtime import RuntimeResource

    if env not in ENVIRONMENTS:
        raise ValueError(f"AIS_ENV must be one of {ENVIRONMENTS}, got {env!r}")
    root = Path(runtime_root)
    common: dict[str, object] = {
        "policies": PoliciesResource(
            directory=os.environ.get("AIS_POLICIES_DIR"), universe_file=os.environ.get("AIS_UNIVERSE_FILE")
        ),
        "runtime": RuntimeResource(root=str(root)),
        "warehouse": warehouse_resource(root),  # issue 15: the store is configuration
        "clock": ClockResource(fixed_now=os.environ.get("AIS_FIXED_NOW")),
    }
    by_env: dict[str, dict[str, object]] = {
        "local": {"market_data": MarketDataResource(provider="sample")},
        "ci": {"market_data": MarketDataResource(provider="sample")},
        "prod": {"market_data": MarketDataResource(provider="auto", files_dir=os.environ.get("AIS_FILES_DIR"))},
    }
    from resources.trading import trading_resources_for

    return {**common, **by_env[env], **trading_resources_for(env, str(root))}


def build_definitions(env: str | None = None, runtime_root: str | None = None) -> dg.Definitions:
    # issue 13: the as-of partitions follow the loaded universe's calendars; bound before the
    # asset modules below read them.
    from ais_pipelines.as_of_calendar import as_of_calendars
    from assets import partitions as as_of_partitions

    as_of_partitions.bind(as_of_calendars(Policies().universe))
    from ais_pipelines.runtime_files import private_umask, use_calendar_cache
    from assets import (
        control,
        execution,
        ingestion,
        intelligence,
        macro,
        portfolio,
        quality,
        reasoning,
        reporting,
    )
    from assets import replay as replay_assets  # issue 12: the walk-forward replay job
    from sensors.execution import execution_sensor, reconciliation_sensor
    from sensors.review import review_queue_sensor
    from sensors.schedules import nightly_schedule, refit_schedule

    env = env or os.environ.get("AIS_ENV", "local")
    root = runtime_root or os.environ.get("AIS_RUNTIME_DIR", "runtime")
    private_umask()  # ledger, warehouse, raw archive, keys: owner-only in every process of the location
    use_calendar_cache(root)  # sensors and intraday steps read the session tables, not a built calendar
    policies = Policies()

    asset_modules = [ingestion, quality, intelligence, portfolio, execution, reasoning, macro]  # last 2: issue 16
    project = reporting.dbt_project()  # parses the dbt manifest only when it is missing or stale
    assets = [*dg.load_assets_from_modules(asset_modules), *reporting.reporting_assets(project)]
    shards = symbol_shards()  # issue 15: K > 1 swaps in the sharded raw_daily_bars / data_quality
    if shards > 1:
        from assets.shards import sharded_data_assets

        sharded = sharded_data_assets(shards)
        swapped = {a.key for a in sharded}
        assets = [a for a in assets if not (isinstance(a, dg.AssetsDefinition) and a.keys & swapped)] + sharded
    assets += [replay_assets.replay_session, replay_assets.replay_tear_sheet]  # issue 12
    checks = dg.load_asset_checks_from_modules(asset_modules)

    nightly_job = dg.define_asset_job(
        "nightly_job",
        tags={"dagster/max_runtime": 3600, **WAREHOUSE_WRITER_TAG},  # run monitoring: a hung night is cancelled
        selection=dg.AssetSelection.groups(*NIGHTLY_GROUPS),
        description="Nightly, for as-of session D: ingest → quality → features → regime → forecasts → "
        "decay → lifecycle → candidates → scenarios → auction → CVaR → order proposals for D+1.",
        executor_def=nightly_executor(shards),  # issue 15
    )
    refit_job = dg.define_asset_job(
        "model_refit_job",
        selection=dg.AssetSelection.groups("models").upstream(),
        tags=WAREHOUSE_WRITER_TAG,
        description="Refit the forecast models on history up to D (their fit date). Own job, own cadence.",
        executor_def=dg.in_process_executor,
    )
    reporting_job = dg.define_asset_job(
        "reporting_job",
        tags={"dagster/max_runtime": 1800, **WAREHOUSE_WRITER_TAG},
        selection=dg.AssetSelection.groups("reporting", "reporting_staging"),
        description="Ledger snapshot → dbt marts + tests → governance report and §J4 metrics for session D.",
        executor_def=dg.in_process_executor,
    )

    # issue 14: in local, schedules and sensors start RUNNING (simulated clock, paper broker);
    # in ci and prod they start stopped until a person turns them on.
    running = env == "local"

    @dg.run_status_sensor(
        run_status=dg.DagsterRunStatus.SUCCESS,
        monitored_jobs=[nightly_job, execution.intraday_execution_job],
        request_job=reporting_job,
        default_status=dg.DefaultSensorStatus.RUNNING if running else dg.DefaultSensorStatus.STOPPED,
        description="After a nightly or intraday run succeeds, rebuild the marts and the governance report.",
    )
    def reporting_after_runs(context: dg.RunStatusSensorContext) -> dg.RunRequest | dg.SkipReason:
        pk = context.dagster_run.tags.get("dagster/partition")
        if not pk:
            return dg.SkipReason("run has no as-of partition")
        return dg.RunRequest(run_key=f"report-{context.dagster_run.run_id}", partition_key=pk)

    defs = dg.Definitions(
        assets=assets,
        asset_checks=checks,
        jobs=[nightly_job, refit_job, reporting_job, execution.intraday_execution_job, execution.reconciliation_job,
              control.review_decision_job, control.trading_control_job,
              replay_assets.replay_job],  # issue 12
        schedules=[nightly_schedule(nightly_job, policies, running=running),
                   refit_schedule(refit_job, policies, running=running)],
        sensors=[
            execution_sensor(execution.intraday_execution_job, policies, running=running),
            reconciliation_sensor(execution.reconciliation_job, policies, running=running),
            reporting_after_runs,
            review_queue_sensor(control.review_decision_job, policies, running=running),  # issue 14
        ],
        resources={**resources_for(env, root), "dbt": reporting.dbt_resource(project)},
    )
    nightly_cfg = policies.schedules.nightly  # freshness expectations of the nightly assets (issue 14)
    fresh = dg.FreshnessPolicy.cron(deadline_cron=nightly_cfg.freshness_deadline_cron,
                                    lower_bound_delta=timedelta(hours=nightly_cfg.freshness_window_hours),
                                    timezone=nightly_cfg.timezone)
    return defs.map_asset_specs(
        func=lambda spec: dg.apply_freshness_policy(spec, fresh) if spec.group_name in NIGHTLY_GROUPS else spec)


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions()
