"""The ``ais`` command: what a person runs by hand (demo, reports, policy checks)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import typer

from ais_pipelines.config import REPO_ROOT, Policies, PolicyFileError

app = typer.Typer(help="AIS Pipelines operations.", no_args_is_help=True, add_completion=False)
quality_app = typer.Typer(help="Data quality.", no_args_is_help=True)
policies_app = typer.Typer(help="Declarative policies.", no_args_is_help=True)
app.add_typer(quality_app, name="quality")
app.add_typer(policies_app, name="policies")


QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def runtime_dir() -> Path:
    return Path(os.environ.get("AIS_RUNTIME_DIR", "runtime")).resolve()


def ensure_dagster_home() -> Path:
    """A project-local DAGSTER_HOME (git-ignored) with telemetry off."""
    home = Path(os.environ.get("DAGSTER_HOME") or runtime_dir() / "dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    cfg = home / "dagster.yaml"
    if not cfg.exists():
        shutil.copy(REPO_ROOT / "dagster.yaml", cfg)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


@app.command()
def demo() -> None:
    """Nightly materialization on the embedded sample market; prints where everything went."""
    import dagster as dg

    from ais_pipelines.definitions import build_definitions

    home = ensure_dagster_home()
    root = runtime_dir()
    defs = build_definitions(runtime_root=str(root))
    instance = dg.DagsterInstance.get()
    typer.echo(f"DAGSTER_HOME: {home}")
    typer.echo("Running nightly_job (ingest → quality → reports) on the embedded sample market …")
    result = defs.resolve_job_def("nightly_job").execute_in_process(
        instance=instance, raise_on_error=False, run_config=QUIET_LOGS
    )
    failed = [e.step_key for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    checks = result.get_asset_check_evaluations()
    typer.echo(f"run {result.run_id}: {'SUCCESS' if result.success else 'FAILURE'}")
    for c in checks:
        typer.echo(f"  check {c.asset_key.to_user_string()}:{c.check_name}: {'passed' if c.passed else 'FAILED'}"
                   f" ({c.severity.value})")
    if failed:
        typer.echo(f"  failed steps: {', '.join(failed)}")
    _print_quality_summary(root)
    typer.echo(f"Warehouse:    {root / 'warehouse.duckdb'}")
    typer.echo(f"Raw archive:  {root / 'raw' / result.run_id}")
    typer.echo(f"Data docs:    {root / 'reports' / 'data_docs' / 'index.html'}")
    typer.echo("Browse it all: make dev  (Dagster UI on http://127.0.0.1:3000)")
    if not result.success:
        raise typer.Exit(1)


def _print_quality_summary(root: Path) -> None:
    import duckdb

    con = duckdb.connect(str(root / "warehouse.duckdb"), read_only=True)
    try:
        q = con.execute(
            "SELECT symbol, asset_class, round(data_quality_score, 3) AS score, status, reason_codes "
            "FROM data_quality WHERE as_of = (SELECT max(as_of) FROM data_quality) ORDER BY score, symbol"
        ).df()
    finally:
        con.close()
    typer.echo("\nData quality (worst first):")
    typer.echo(q.head(12).to_string(index=False))
    typer.echo(f"… {len(q)} symbols, {int((q['status'] == 'VALID').sum())} tradable\n")


@quality_app.command("report")
def quality_report(out: Path = typer.Option(None, help="Output directory for the Data Docs.")) -> None:
    """Write the Great Expectations Data Docs for what the warehouse holds now."""
    import duckdb

    from ais_pipelines.reports.data_docs import data_docs_from_warehouse

    root = runtime_dir()
    db = Path(os.environ.get("AIS_WAREHOUSE", root / "warehouse.duckdb"))
    if not db.exists():
        typer.echo(f"No warehouse at {db}: run `make demo` (or the nightly job) first.", err=True)
        raise typer.Exit(2)
    out_dir = out or root / "reports" / "data_docs"
    con = duckdb.connect(str(db), read_only=True)
    try:
        result = data_docs_from_warehouse(con, Policies(), out_dir)
    finally:
        con.close()
    for name, stats in result.suites.items():
        typer.echo(f"{name}: {stats['successful']}/{stats['evaluated']} expectations met on {stats['rows']} rows")
    typer.echo(f"Data Docs: {result.index_path.resolve()}")


@app.command()
def report(
    as_of: str = typer.Option(None, "--as-of", help="As-of session YYYY-MM-DD (default: the latest assessed)."),
    out: Path = typer.Option(None, help="Output directory (default: runtime/reports/governance)."),
    snapshot: bool = typer.Option(True, help="Copy the ledger into the warehouse first (needs its write lock)."),
) -> None:
    """Write the governance report of one as-of session: one self-contained HTML file."""
    import duckdb

    from ais_pipelines.reports.governance import latest_as_of, write_governance_report
    from ais_pipelines.reports.ledger_copy import snapshot_ledger

    root = runtime_dir()
    db = Path(os.environ.get("AIS_WAREHOUSE", root / "warehouse.duckdb"))
    if not db.exists():
        typer.echo(f"No warehouse at {db}: run `make demo` (or the nightly job) first.", err=True)
        raise typer.Exit(2)
    if snapshot:
        url = os.environ.get("AIS_LEDGER_URL") or f"sqlite:///{root / 'ledger.sqlite'}"
        copied = snapshot_ledger(url, db)
        typer.echo(f"Ledger snapshot: {copied.rows.get('ledger_orders', 0)} orders, "
                   f"{copied.rows.get('ledger_fills', 0)} fills")
    if as_of is None:
        con = duckdb.connect(str(db), read_only=True)
        try:
            found = latest_as_of(con)
        finally:
            con.close()
        if found is None:
            typer.echo("The warehouse has no data_quality assessment yet: nothing to report.", err=True)
            raise typer.Exit(2)
        as_of = str(found)
    path = write_governance_report(db, as_of, out or root / "reports" / "governance")
    typer.echo(f"Governance report ({as_of}): {path.resolve()}")


@policies_app.command("validate")
def policies_validate(directory: Path = typer.Option(None, help="Policies directory.")) -> None:
    """Load and validate every policy file; exit 1 naming the file, key and value on error."""
    try:
        loaded = Policies(directory).validate_all()
    except PolicyFileError as exc:
        typer.echo(f"INVALID {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo("valid: " + ", ".join(loaded))


if __name__ == "__main__":
    app()
