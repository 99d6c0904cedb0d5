"""The ``ais`` command: what a person runs by hand (demo, reports, policy checks)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from ais_pipelines.cli_support import (  # noqa: F401  (re-exported for cli_<topic> modules)
    QUIET_LOGS,
    ensure_dagster_home,
    parse_session,
    runtime_dir,
    warehouse_path,
    where_everything_is,
)

# Light by design (issue 14): this module, cli_support and every mounted cli_<topic> module import
# no Dagster, dbt or Great Expectations at module level; commands import what they run.
app = typer.Typer(help="AIS Pipelines operations. Add --debug to any command for a traceback on error.",
                  no_args_is_help=True, add_completion=False)
quality_app = typer.Typer(help="Data quality.", no_args_is_help=True)
policies_app = typer.Typer(help="Declarative policies.", no_args_is_help=True)
app.add_typer(quality_app, name="quality")
app.add_typer(policies_app, name="policies")


@app.command()
def demo() -> None:
    """The whole loop on the sample market, one line per stage: refit, nightly, execution, reports.

    Model refit, nightly materialization of the last sample session D, one intraday execution on
    the paper broker in the simulated session after D, then the dbt marts and the governance
    report. What the libraries print goes to runtime/logs/demo.log (dbt: runtime/logs/dbt.log).
    """
    from ais_pipelines.cli_ops import ensure_dev_signing_key
    from ais_pipelines.cli_support import Stage, quiet_library_warnings
    from ais_pipelines.config import Policies
    from ais_pipelines.core.calendars import last_n_sessions

    quiet_library_warnings()
    ensure_dagster_home()
    root = runtime_dir()
    os.environ.setdefault("AIS_RUNTIME_DIR", str(root))
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / "demo.log"
    log = log_path.open("w")  # open for the whole demo: library log handlers keep a reference to it
    policies = Policies()
    d = policies.providers.sample.end_session
    fit = last_n_sessions("XNYS", d, 6)[0].date()  # models fitted a week before D: their age is real
    key = ensure_dev_signing_key(root, os.environ.get("AIS_ENV", "local"))
    if key is not None:
        typer.echo(f"Approval key: {key} (development key, owner-only; `ais key init` makes one)")

    with Stage("loading the code location", log, number=1, total=6) as st:
        import dagster as dg

        from ais_pipelines.definitions import build_definitions

        defs = build_definitions(runtime_root=str(root))
        instance = dg.DagsterInstance.get()
        st.done(f"{len(list(defs.resolve_all_job_defs()))} jobs")

    ok = True
    with Stage(f"model refit [{fit}]", log, number=2, total=6) as st:
        ok = _run_job(defs, instance, "model_refit_job", str(fit), st) and ok
    with Stage(f"nightly materialization [{d}]", log, number=3, total=6) as st:
        ok = _run_job(defs, instance, "nightly_job", str(d), st) and ok
        st.note(_quality_line(root, d))
    with Stage(f"intraday execution of {d} on the paper broker", log, number=4, total=6) as st:
        ok = _run_execution(str(d), st) and ok
    with Stage(f"dbt marts and governance report [{d}]", log, number=5, total=6) as st:
        ok = _run_job(defs, instance, "reporting_job", str(d), st) and ok
        log.flush()
        dbt_summary = _dbt_summary(log_path, logs / "dbt.log")
        if dbt_summary:
            st.note(dbt_summary)

    with Stage("walk-forward replay of the last sample sessions", log, number=6, total=6) as st:
        from ais_pipelines.cli_replay import demo_replay  # issue 12

        replay_ok, lines = demo_replay(root)
        ok = replay_ok and ok
        st.done(lines[0], ok=replay_ok)
        for line in lines[1:]:
            st.note(line)

    typer.echo("")
    for what, where in where_everything_is(root):
        typer.echo(f"{what + ':':<19} {where}")
    typer.echo(f"{'Library output:':<19} {log_path}")
    typer.echo("Next: make dev (Dagster UI on http://127.0.0.1:3000) · uv run ais review list · uv run ais trading status")
    if not ok:
        raise typer.Exit(1)


def _run_job(defs, instance, job: str, partition: str, stage) -> bool:
    result = defs.resolve_job_def(job).execute_in_process(
        instance=instance, partition_key=partition, raise_on_error=False, run_config=QUIET_LOGS
    )
    evals = result.get_asset_check_evaluations()
    bad = [c for c in evals if not c.passed]
    stage.done(f"{len(evals) - len(bad)}/{len(evals)} checks passed", ok=result.success)
    for c in bad:
        what = c.description or "failed"
        stage.note(f"check {c.asset_key.to_user_string()}:{c.check_name}: {what}")
    for e in result.all_events:
        if e.event_type_value == "STEP_FAILURE":
            first = e.event_specific_data.error.message.strip().splitlines()[0][:300]
            stage.note(f"failed step {e.step_key}: {first} (run {result.run_id}; details in the UI or the log)")
    return result.success


def _run_execution(as_of: str, stage) -> bool:
    """``ais execute`` of D with its tables in the log, one summary line on the terminal."""
    import duckdb

    from ais_pipelines.cli_ops import execute
    from ais_pipelines.warehouse_store import connect_warehouse

    try:
        execute(as_of=as_of, dev_key=False)
        ok = True
    except typer.Exit as exc:
        ok = exc.exit_code == 0
    with connect_warehouse(str(warehouse_path()), read_only=True) as con:
        def one(sql: str) -> tuple:
            try:
                return con.execute(sql, [as_of]).fetchone() or ()
            except duckdb.Error:
                return ()

        decisions = one("SELECT count(*) FILTER (WHERE decision = 'APPROVE'), count(*) FILTER (WHERE decision = "
                        "'REVIEW'), count(*) FILTER (WHERE decision = 'REJECT') FROM governance_decisions "
                        "WHERE as_of = ?")
        orders = one("SELECT count(*), count(*) FILTER (WHERE state = 'FILLED') FROM execution_orders WHERE as_of = ?")
    from ais_pipelines import control
    from ais_pipelines.cli_ops import book_line, ops_env, session_book

    ops = ops_env()
    book = session_book(ops, as_of)
    waiting = control.pending_reviews_of(ops.ledger.store(), as_of)
    parts = []
    if decisions:
        parts.append(f"{decisions[0]} approved, {decisions[1]} to review, {decisions[2]} rejected")
    if orders:
        parts.append(f"{orders[0]} orders sent, {orders[1]} filled")
    stage.done("; ".join(parts) or "nothing decided", ok=ok)
    if book is not None:
        stage.note(book_line(book))
    if waiting:
        stage.note(f"{waiting} order(s) wait for a person: `uv run ais review list`")
    return ok


def _quality_line(root: Path, as_of) -> str:
    from ais_pipelines.warehouse_store import connect_warehouse

    with connect_warehouse(str(warehouse_path(root)), read_only=True) as con:
        q = con.execute("SELECT symbol, status FROM data_quality WHERE as_of = ? ORDER BY symbol", [as_of]).df()
    bad = q[q["status"] != "VALID"]
    named = ", ".join(f"{r.symbol} ({r.status})" for r in bad.head(6).itertuples())
    more = f" and {len(bad) - 6} more" if len(bad) > 6 else ""
    return (f"data quality: {len(q) - len(bad)} of {len(q)} symbols tradable"
            + (f"; excluded, not halted: {named}{more} (`uv run ais quality report`)" if len(bad) else ""))


def _dbt_summary(demo_log: Path, dbt_log: Path) -> str | None:
    """dbt's own summary line (``Done. PASS=… TOTAL=…``) from the captured output; the dbt lines
    themselves are copied to ``dbt_log``."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", demo_log.read_text(errors="replace"))  # dbt's colours
    lines = [ln for ln in text.splitlines()
             if re.match(r"^\d+ of \d+ |^Finished running|^Done\. PASS=|^Running with dbt|^Found \d+", ln)]
    if not lines:
        return None
    dbt_log.write_text("\n".join(lines) + "\n")
    done = next((ln for ln in reversed(lines) if ln.startswith("Done. PASS=")), None)
    took = next((re.search(r"\(([\d.]+s)\)", ln) for ln in reversed(lines) if ln.startswith("Finished running")), None)
    return f"dbt build: {done.removeprefix('Done. ') if done else 'no summary'}" + (
        f" in {took.group(1)}" if took else "") + f" (log: {dbt_log})"


@quality_app.command("report")
def quality_report(out: Path = typer.Option(None, help="Output directory for the Data Docs.")) -> None:
    """Write the Great Expectations Data Docs for what the warehouse holds now."""
    from ais_pipelines.config import Policies
    from ais_pipelines.reports.data_docs import data_docs_from_warehouse
    from ais_pipelines.warehouse_store import connect_warehouse

    root = runtime_dir()
    db = warehouse_path(root)
    if not db.exists():
        typer.echo(f"WAREHOUSE_MISSING: no warehouse at {db}; run `make demo` (or the nightly job) first", err=True)
        raise typer.Exit(2)
    out_dir = out or root / "reports" / "data_docs"
    with connect_warehouse(str(db), read_only=True) as con:
        result = data_docs_from_warehouse(con, Policies(), out_dir)
    for name, stats in result.suites.items():
        typer.echo(f"{name}: {stats['successful']}/{stats['evaluated']} expectations met on {stats['rows']} rows")
    typer.echo(f"Data Docs: {result.index_path.resolve()}")


@app.command()
def report(
    as_of: str = typer.Option(None, "--as-of", help="As-of session YYYY-MM-DD (default: the latest assessed).",
                              callback=parse_session),
    out: Path = typer.Option(None, help="Output directory (default: runtime/reports/governance)."),
    snapshot: bool = typer.Option(True, help="Copy the ledger into the warehouse first (needs its write lock)."),
) -> None:
    """Write the governance report of one as-of session: one self-contained HTML file."""
    from ais_pipelines.reports.governance import latest_as_of, write_governance_report
    from ais_pipelines.reports.ledger_copy import snapshot_ledger
    from ais_pipelines.warehouse_store import connect_warehouse

    root = runtime_dir()
    db = warehouse_path(root)
    if not db.exists():
        typer.echo(f"WAREHOUSE_MISSING: no warehouse at {db}; run `make demo` (or the nightly job) first", err=True)
        raise typer.Exit(2)
    if snapshot:
        from ais_pipelines.cli_support import ledger_url

        url = ledger_url(root)
        copied = snapshot_ledger(url, db)
        typer.echo(f"Ledger snapshot: {copied.rows.get('ledger_orders', 0)} orders, "
                   f"{copied.rows.get('ledger_fills', 0)} fills")
    if as_of is None:
        with connect_warehouse(str(db), read_only=True) as con:
            found = latest_as_of(con)
        if found is None:
            typer.echo("The warehouse has no data_quality assessment yet: nothing to report.", err=True)
            raise typer.Exit(2)
        as_of = str(found)
    from ais_pipelines.as_of_calendar import as_of_calendars
    from ais_pipelines.config import Policies

    path = write_governance_report(db, as_of, out or root / "reports" / "governance",
                                   calendars=as_of_calendars(Policies().universe))
    typer.echo(f"Governance report ({as_of}): {path.resolve()}")


@policies_app.command("validate")
def policies_validate(directory: Path = typer.Option(None, help="Policies directory.")) -> None:
    """Validate every policy file, the rules between them and each environment's combined
    overlay (local, ci, prod). One line per problem naming file, key and value; exit 1 on any."""
    from ais_pipelines.config import Policies
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


# Command modules, one mount line each (light imports only: heavy ones inside the commands).
from ais_pipelines.cli_ops import register as _register_ops  # noqa: E402  (review/trading/audit/key/paths/execute)

_register_ops(app)
from ais_pipelines.cli_data import register as _register_data  # noqa: E402  (issue 13: ais ingest, ais quality show)

_register_data(app)
from ais_pipelines.cli_replay import register as _register_replay  # noqa: E402  (issue 12: ais replay)

_register_replay(app)


def main() -> None:
    """The console entry point: private files (umask 077) and one-line errors (``--debug``: traceback)."""
    import sys

    from ais_pipelines.cli_errors import run_cli
    from ais_pipelines.runtime_files import (
        private_dir,
        private_umask,
        runtime_dir_is_ours,
        use_calendar_cache,
    )

    private_umask()
    from ais_pipelines.cli_support import quiet_library_warnings

    quiet_library_warnings()  # Dagster's preview/beta notices on every import of the code location
    root = runtime_dir()
    use_calendar_cache(root)
    if runtime_dir_is_ours(root):  # created by `make setup` before this process: owner-only too
        private_dir(root)
    sys.exit(run_cli(app))


if __name__ == "__main__":
    main()
