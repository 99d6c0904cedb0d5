"""Reporting (§K): the ledger snapshot in the warehouse, the dbt marts over it, and the
per-session governance report with the §J4 metrics.

* ``ledger_snapshot`` copies the transactional ledger into the warehouse (``ledger_*``).
* ``build_dbt_assets()`` builds the dbt project's models as assets (staging views, marts) and
  its tests as asset checks. dbt sources map onto the Python assets that write them, so the
  lineage runs from the bars to the marts. dbt runs in the ``duckdb`` pool: DuckDB has one
  writing process.
* ``governance_report`` (partitioned by as-of session) writes one self-contained HTML file per
  session and the §J4 metrics as numeric metadata and as a Prometheus text file.

The dbt assets need a manifest: ``dbt_project()`` builds it with ``dbt parse`` (offline) when
it is missing or older than the project's files — in the definitions factory, never at import.
"""


import contextlib
import functools
import importlib.metadata
import math
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
from dagster_dbt import (
    DagsterDbtTranslator,
    DagsterDbtTranslatorSettings,
    DbtCliResource,
    DbtProject,
    dbt_assets,
)
from dagster_duckdb import DuckDBResource
from sqlalchemy.engine import make_url

from ais_pipelines.config import REPO_ROOT
from ais_pipelines.dbt_cli import dbt_executable
from ais_pipelines.reports.ledger_copy import LEDGER_TABLES, copy_ledger_to_warehouse, ledger_read_engine
from assets._common import ui_table
from assets.intelligence import model_decay_metrics, regime_probabilities, strategy_lifecycle
from assets.partitions import as_of_partitions, bound_calendars, partition_as_of
from assets.quality import data_quality
from resources.runtime import RuntimeResource
from resources.trading import LedgerResource

DBT_PROJECT_DIR = REPO_ROOT / "dbt"
REPORTING_GROUP = "reporting"
DBT_STAGING_GROUP = "reporting_staging"
# Assets of other stages whose warehouse tables the report reads (capital_auction writes
# capital_allocations and auction_summary; portfolio_cvar also writes portfolio_cvar_components).
# Declared by key, not imported: an asset that does not exist yet shows as an external asset.
REPORT_UPSTREAM = ("capital_auction", "portfolio_cvar", "order_proposals", "approved_orders", "portfolio_state")


# --- ledger snapshot ------------------------------------------------------------------------
def display_url(url: str) -> str:
    """The URL with any password hidden (safe for metadata and logs)."""
    return make_url(url).render_as_string(hide_password=True)


@dg.asset(
    group_name=REPORTING_GROUP,
    deps=[dg.AssetKey("portfolio_state")],  # lineage: the intraday job writes the ledger it copies
    kinds={"python", "duckdb", "sql"},
    pool="duckdb",
    check_specs=[dg.AssetCheckSpec(
        "ledger_fills_bookable", asset="ledger_snapshot",
        description="The copied fills can be booked (core.accounting): unique ids, BUY/SELL, qty and price > 0, "
        "UTC timestamps. If not, P&L marts and metrics are not trustworthy.",
    )],
    description="The transactional ledger (orders, order events, fills, positions, approvals, review queue, "
    "trading state, execution events, audit log, paper account) copied whole into the warehouse as "
    "ledger_<table>, in one transaction, plus per-fill accounting (ledger_fill_pnl). The dbt marts model it.",
)
def ledger_snapshot(context: dg.AssetExecutionContext, ledger: LedgerResource, warehouse: DuckDBResource):
    url = ledger.resolved_url()
    engine = ledger_read_engine(url)
    try:
        with warehouse.get_connection() as con:
            result = copy_ledger_to_warehouse(engine, con, LEDGER_TABLES)
    finally:
        engine.dispose()
    rows = pd.DataFrame({"table": list(result.rows), "rows": list(result.rows.values())})
    yield dg.MaterializeResult(metadata={
        "ledger": display_url(url),
        "copied_at": result.copied_at.isoformat(),
        "tables": len(result.rows),
        "orders": result.rows.get("ledger_orders", 0),
        "fills": result.rows.get("ledger_fills", 0),
        "missing_in_ledger": ", ".join(result.missing) or "none",
        "rows_by_table": ui_table(rows),
        "dagster/row_count": result.total_rows,
    })
    yield dg.AssetCheckResult(
        check_name="ledger_fills_bookable",
        passed=result.accounting_error is None,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"error": result.accounting_error or "none", "fills": result.rows.get("ledger_fills", 0)},
    )


# --- dbt ------------------------------------------------------------------------------------
def _newest_source_mtime(project_dir: Path) -> float:
    files = [project_dir / "dbt_project.yml", project_dir / "profiles.yml"]
    for sub in ("models", "macros", "tests"):
        files.extend(p for p in (project_dir / sub).rglob("*") if p.suffix in (".sql", ".yml", ".yaml"))
    return max((p.stat().st_mtime for p in files if p.exists()), default=0.0)


def dbt_project(project_dir: Path = DBT_PROJECT_DIR) -> DbtProject:
    """The dbt project with a loadable manifest: ``dbt parse`` (offline, no warehouse needed)
    when ``target/manifest.json`` is missing or older than any of the project's files. This also
    covers ``dagster dev`` reloads, so dagster-dbt's ``prepare_if_dev`` is not needed."""
    os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
    project = DbtProject(project_dir=project_dir)
    manifest = project.manifest_path
    if not manifest.exists() or manifest.stat().st_mtime < _newest_source_mtime(Path(project.project_dir)):
        parse_manifest(project)
    return project


def parse_manifest(project: DbtProject) -> Path:
    """``dbt parse`` into a private directory, then move the manifest into place atomically, so
    two processes loading the code location at once never read a half-written manifest."""
    target = Path(project.project_dir) / project.target_path
    scratch = target / f"parse-{uuid.uuid4().hex[:10]}"
    try:
        DbtCliResource(project_dir=project, dbt_executable=dbt_executable()).cli(
            ["parse", "--quiet"], target_path=scratch).wait()
        if (scratch / "partial_parse.msgpack").exists():
            os.replace(scratch / "partial_parse.msgpack", target / "partial_parse.msgpack")
        os.replace(scratch / "manifest.json", project.manifest_path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return project.manifest_path


class AisDbtTranslator(DagsterDbtTranslator):
    """dbt sources → the Python assets that write them (``warehouse.data_quality`` →
    ``data_quality``; ``meta.dagster.asset_key`` where names differ; every ``ledger`` source →
    ``ledger_snapshot``). dbt models → ``[schema, name]`` (``marts/orders``), so a mart never
    collides with the Python asset of the same name."""

    def __init__(self) -> None:
        super().__init__(DagsterDbtTranslatorSettings(enable_asset_checks=True,
                                                      enable_duplicate_source_asset_keys=True))

    def get_asset_key(self, dbt_resource_props: dict[str, Any]) -> dg.AssetKey:
        meta_key = (dbt_resource_props.get("meta") or {}).get("dagster", {}).get("asset_key") or \
            ((dbt_resource_props.get("config") or {}).get("meta") or {}).get("dagster", {}).get("asset_key")
        if meta_key:
            return dg.AssetKey(meta_key)
        if dbt_resource_props["resource_type"] == "source":
            if dbt_resource_props["source_name"] == "ledger":
                return dg.AssetKey("ledger_snapshot")
            return dg.AssetKey(dbt_resource_props["name"])
        schema = (dbt_resource_props.get("config") or {}).get("schema") or "dbt"
        return dg.AssetKey([schema, dbt_resource_props["name"]])

    def get_group_name(self, dbt_resource_props: dict[str, Any]) -> str | None:
        if dbt_resource_props["resource_type"] == "source":
            return None
        schema = (dbt_resource_props.get("config") or {}).get("schema")
        return DBT_STAGING_GROUP if schema == "staging" else REPORTING_GROUP


class LeanDbtCliResource(DbtCliResource):
    """dagster-dbt's resource without two per-run costs we do not use (issue 14: dbt in Dagster
    ≤ 1.5× dbt's own build). Measured in one ``warehouse_marts`` run: ``dbt --version`` in a
    subprocess (~9 s loaded, a whole dbt start-up) and an in-process dbt adapter with its macro
    manifest (~5 s), which dagster-dbt builds only for ``fetch_row_counts`` /
    ``fetch_column_metadata`` — not called here. The version is that of this environment's
    dbt-core, whose ``dbt`` executable :func:`dbt_executable` runs (a test checks they agree)."""

    @functools.cached_property
    def _cli_version(self) -> Any:
        from packaging import version

        return version.parse(importlib.metadata.version("dbt-core"))

    def _initialize_dbt_core_adapter(self, args: Any) -> Any:
        return None  # dagster-dbt treats "no adapter" as supported (it is optional there)


def dbt_resource(project: DbtProject | None = None) -> DbtCliResource:
    """The ``dbt`` resource for the definitions factory."""
    return LeanDbtCliResource(project_dir=project or dbt_project(), dbt_executable=dbt_executable())


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    """Set environment variables for the duration of the block (the dbt process inherits them)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# With the Parquet store the marts live in this DuckDB file beside it (what BI tools open).
MARTS_FILE_OF_PARQUET_STORE = "warehouse_marts.duckdb"


def build_dbt_assets(project: DbtProject | None = None) -> dg.AssetsDefinition:
    """The dbt models as assets (tests as checks). Call inside the definitions factory."""
    project = project or dbt_project()

    @dbt_assets(
        manifest=project.manifest_path,
        project=project,
        dagster_dbt_translator=AisDbtTranslator(),
        name="warehouse_marts",
        pool="duckdb",
    )
    def warehouse_marts(context: dg.AssetExecutionContext, dbt: DbtCliResource, warehouse: DuckDBResource):
        """``dbt build`` (models + tests) on the warehouse file the ``warehouse`` resource points to.

        The path goes in through the profile's ``AIS_WAREHOUSE`` environment variable, and the
        target folder is stable (next to the warehouse), so dbt's partial parse of the previous
        run is reused (issue 14: a per-run folder or ``--vars`` made every run re-parse)."""
        database = Path(warehouse.database).resolve()
        if getattr(warehouse, "store", "duckdb") == "parquet":  # issue 15: dbt needs one database file
            from ais_pipelines.warehouse_store import refresh_duckdb_copy

            store, database = database, database.parent / MARTS_FILE_OF_PARQUET_STORE
            copied = refresh_duckdb_copy(store, database)
            context.log.info(f"dbt builds the marts in {database}: a copy of {len(copied)} tables of {store}")
        target = database.parent / "dbt_target"  # run_results.json, dbt.log, partial_parse.msgpack
        with _environment(AIS_WAREHOUSE=str(database)):  # read when the dbt process is started
            invocation = dbt.cli(["build"], context=context, target_path=target)
        yield from invocation.stream()

    return warehouse_marts


def mart_key(name: str) -> dg.AssetKey:
    return dg.AssetKey(["marts", name])


# --- governance report ----------------------------------------------------------------------
def _metric_metadata(metrics: dict[str, float]) -> dict[str, Any]:
    """Finite §J4 numbers as float metadata (the UI plots them across partitions)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(v)}


@dg.asset(
    group_name=REPORTING_GROUP,
    partitions_def=as_of_partitions,
    kinds={"python", "html"},
    pool="duckdb",
    deps=[ledger_snapshot, data_quality, regime_probabilities, strategy_lifecycle, model_decay_metrics,
          *(dg.AssetKey(k) for k in REPORT_UPSTREAM)],
    description="One self-contained HTML governance report per as-of session for a risk officer: data quality "
    "and exclusions, regime, allocations with reason codes, CVaR and its components, policy decisions and "
    "vetoes, orders and fills, P&L and drawdown, trading state and overrides. The §J4 metrics are numeric "
    "metadata and a Prometheus text file under reports/metrics/.",
)
def governance_report(context: dg.AssetExecutionContext, warehouse: DuckDBResource,
                      runtime: RuntimeResource) -> dg.MaterializeResult:
    from ais_pipelines.reports.governance import (
        load_governance_inputs,
        render_governance_report,
        report_path,
        write_metrics_file,
    )

    as_of = partition_as_of(context).date()
    with warehouse.get_connection() as con:
        inputs = load_governance_inputs(con, as_of, calendars=bound_calendars())
    reports = runtime.reports_dir()
    path = report_path(reports / "governance", as_of)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(render_governance_report(inputs), encoding="utf-8")
    tmp.replace(path)
    latest, archive = write_metrics_file(inputs.metrics, as_of, reports / "metrics")
    dq = inputs.data_quality
    excluded = dq.loc[dq["status"] != "VALID", "symbol"].tolist() if not dq.empty else []
    undefined = sorted(k for k, v in inputs.metrics.items() if not math.isfinite(v))
    return dg.MaterializeResult(metadata={
        "report": dg.MetadataValue.path(str(path.resolve())),
        "report_url": dg.MetadataValue.url(path.resolve().as_uri()),
        "prometheus_file": dg.MetadataValue.path(str(archive.resolve())),
        "prometheus_latest": dg.MetadataValue.path(str(latest.resolve())),
        "execution_session": str(inputs.execution_session) if inputs.execution_session else "none",
        "excluded_symbols": ", ".join(excluded) or "none",
        "orders": len(inputs.orders),
        "fills": len(inputs.fills),
        "trading_state": str(inputs.trading_state.iloc[-1]["mode"]) if not inputs.trading_state.empty else "ACTIVE",
        "missing_tables": ", ".join(inputs.missing_tables) or "none",
        "undefined_metrics": ", ".join(undefined) or "none",
        "report_bytes": path.stat().st_size,
        **_metric_metadata(inputs.metrics),
    })


def reporting_assets(project: DbtProject | None = None) -> list[dg.AssetsDefinition]:
    """Everything this module contributes, for the definitions factory."""
    return [ledger_snapshot, build_dbt_assets(project), governance_report]
