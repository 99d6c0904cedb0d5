"""The ``ais`` command: what a person runs by hand (demo, reports, policy checks)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import typer

from ais_pipelines.config import REPO_ROOT, Policies

app = typer.Typer(help="AIS Pipelines operations. Add --debug to any command for a traceback on error.",
                  no_args_is_help=True, add_completion=False)
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
    """The whole loop on the embedded sample market: model refit, nightly materialization of the
    last sample session D, one intraday execution tick on the paper broker in the simulated
    session after D, then the dbt marts and the governance report. Prints where everything went."""
    import dagster as dg

    from ais_pipelines.cli_ops import ensure_dev_signing_key, execute
    from ais_pipelines.core.calendars import last_n_sessions
    from ais_pipelines.definitions import build_definitions

    home = ensure_dagster_home()
    root = runtime_dir()
    os.environ.setdefault("AIS_RUNTIME_DIR", str(root))
    policies = Policies()
    d = policies.providers.sample.end_session
    fit = last_n_sessions("XNYS", d, 6)[0].date()  # models fitted a week before D: their age is real
    key = ensure_dev_signing_key(root, os.environ.get("AIS_ENV", "local"))
    if key is not None:
        typer.echo(f"Development approval key (owner-only permissions): {key}")
    defs = build_definitions(runtime_root=str(root))
    instance = dg.DagsterInstance.get()
    typer.echo(f"DAGSTER_HOME: {home}")

    ok = True
    for job, pk, what in (("model_refit_job", str(fit), "model refit"),
                          ("nightly_job", str(d), "nightly materialization")):
        typer.echo(f"\n== {what}: {job} [{pk}] ==")
        ok = _run_job(defs, instance, job, pk) and ok
    _print_quality_summary(root, d)

    typer.echo(f"\n== intraday execution: the session after {d} on the paper broker ==")
    try:
        execute(as_of=str(d), dev_key=False)
    except typer.Exit as exc:
        ok = ok and exc.exit_code == 0

    typer.echo(f"\n== reports: reporting_job [{d}] ==")
    ok = _run_job(defs, instance, "reporting_job", str(d)) and ok
    typer.echo(f"\nWarehouse:          {root / 'warehouse.duckdb'}")
    typer.echo(f"Ledger:             {root / 'ledger.sqlite'}")
    typer.echo(f"Raw archive:        {root / 'raw'}")
    typer.echo(f"Data docs:          {root / 'reports' / 'data_docs' / 'index.html'}")
    typer.echo(f"Governance report:  {root / 'reports' / 'governance'}")
    typer.echo(f"Metrics:            {root / 'reports' / 'metrics' / 'ais_metrics.prom'}")
    typer.echo("Browse it all: make dev  (Dagster UI on http://127.0.0.1:3000)")
    from ais_pipelines.cli_replay import demo_replay  # issue 12: a short walk-forward replay

    ok = demo_replay(root) and ok
    if not ok:
        raise typer.Exit(1)


def _run_job(defs, instance, job: str, partition: str) -> bool:
    result = defs.resolve_job_def(job).execute_in_process(
        instance=instance, partition_key=partition, raise_on_error=False, run_config=QUIET_LOGS
    )
    typer.echo(f"run {result.run_id}: {'SUCCESS' if result.success else 'FAILURE'}")
    bad = [c for c in result.get_asset_check_evaluations() if not c.passed]
    n = len(result.get_asset_check_evaluations())
    typer.echo(f"  {n - len(bad)}/{n} checks passed")
    for c in bad:
        typer.echo(f"  check {c.asset_key.to_user_string()}:{c.check_name}: FAILED ({c.severity.value})")
    for e in result.all_events:
        if e.event_type_value == "STEP_FAILURE":
            typer.echo(f"  failed step {e.step_key}: {e.event_specific_data.error.message.strip()[:300]}")
    return result.success


def _print_quality_summary(root: Path, as_of) -> None:
    import duckdb

    con = duckdb.connect(str(root / "warehouse.duckdb"), read_only=True)
    try:
        q = con.execute(
            "SELECT symbol, asset_class, round(data_quality_score, 3) AS score, status, reason_codes "
            "FROM data_quality WHERE as_of = ? ORDER BY score, symbol", [as_of]
        ).df()
    finally:
        con.close()
    typer.echo(f"\nData quality {as_of} (worst first):")
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
    """Validate every policy file, the rules between them and each environment's combined
    overlay (local, ci, prod). One line per problem naming file, key and value; exit 1 on any."""
    from ais_pipelines.execution import ENVIRONMENTS

    policies = Policies(directory)
    errors = policies.check()
    for exc in errors:
        for problem in exc.problems:
            typer.echo(f"INVALID {exc.path}: {problem}", err=True)
    if errors:
        raise typer.Exit(1)
    typer.echo(f"OK {policies.directory}: {len(Policies.FILES)} policy files, pre_trade + vetoes, "
               f"environments {', '.join(ENVIRONMENTS)}")


from ais_pipelines.cli_ops import register as _register_ops  # noqa: E402  (mounts review/trading/audit/execute)

_register_ops(app)
from ais_pipelines.cli_replay import register as _register_replay  # noqa: E402  (issue 12: ais replay)

_register_replay(app)

def main() -> None:
    """The console entry point: private files (umask 077) and one-line errors (``--debug``: traceback)."""
    import sys

    from ais_pipelines.cli_errors import run_cli
    from ais_pipelines.runtime_files import private_dir, private_umask, runtime_dir_is_ours

    private_umask()
    root = runtime_dir()
    if runtime_dir_is_ours(root):  # created by `make setup` before this process: owner-only too
        private_dir(root)
    sys.exit(run_cli(app))


if __name__ == "__main__":
    main()
