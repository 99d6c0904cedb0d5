"""Operator commands mounted on the ``ais`` app (§H5, §J2, §J3): review queue, trading state,
audit verification, the approval key, where things are, and one intraday execution.

    ais review list [--status PENDING|APPROVED|REJECTED|ALL]
    ais review approve ITEM_ID --actor NAME --why TEXT
    ais review reject  ITEM_ID --actor NAME --why TEXT
    ais trading status
    ais trading kill|pause|resume|deleverage --actor NAME --why TEXT
    ais audit verify
    ais key init
    ais paths
    ais execute [--as-of D] [--dev-key]

They call the same plain functions as the Dagster control jobs (:mod:`ais_pipelines.control`,
:mod:`assets.control`) with the environment's settings (``AIS_ENV``, ``AIS_RUNTIME_DIR``,
``AIS_WAREHOUSE``, ``AIS_LEDGER_URL``, ``AIS_POLICIES_DIR``). Everything but ``execute`` and
``runs`` works on the plain settings of :mod:`ais_pipelines.trading_env` and never imports
Dagster, dbt or Great Expectations (issue 14: under 2 s). Mount with :func:`register`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

from ais_pipelines.cli_support import (
    ReviewStatus,
    environment,
    parse_session,
    runtime_dir,
    warehouse_path,
    where_everything_is,
)
from ais_pipelines.core.trading_state import ResumeTo

review_app = typer.Typer(help="Human review queue: nothing in REVIEW executes by itself.", no_args_is_help=True)
trading_app = typer.Typer(help="Trading state: kill switch, pause, resume, deleverage.", no_args_is_help=True)
audit_app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)
runs_app = typer.Typer(help="Runs left behind by a killed process, and how to release them.", no_args_is_help=True)
key_app = typer.Typer(help="The approval signing key.", no_args_is_help=True)

ACTOR = typer.Option(..., "--actor", help="Who (a person; recorded in the audit log).")
WHY = typer.Option(..., "--why", help="Why (mandatory; recorded in the audit log).")


@dataclass
class OpsEnv:
    """The environment's plain trading settings (:func:`ais_pipelines.trading_env.trading_env_for`)."""

    env: str
    root: Path
    warehouse: str
    settings: dict[str, Any]
    _policies: Any = field(default=None, repr=False)

    @property
    def ledger(self) -> Any:
        return self.settings["ledger"]

    def policies(self) -> Any:
        if self._policies is None:
            from ais_pipelines.config import Policies

            self._policies = Policies(os.environ.get("AIS_POLICIES_DIR"), os.environ.get("AIS_UNIVERSE_FILE"))
        return self._policies

    def dagster_resources(self) -> dict[str, Any]:
        """The same settings as Dagster resources (for ``execute``, which runs a job)."""
        from ais_pipelines.warehouse_location import configured_store
        from resources.policies import PoliciesResource
        from resources.trading import trading_resources_for
        from resources.warehouse import WarehouseResource

        return {
            "policies": PoliciesResource(directory=os.environ.get("AIS_POLICIES_DIR"),
                                         universe_file=os.environ.get("AIS_UNIVERSE_FILE")),
            "warehouse": WarehouseResource(database=self.warehouse, store=configured_store()),
            **trading_resources_for(self.env, str(self.root)),
        }


def ops_env() -> OpsEnv:
    """The environment's settings, chosen the same way as in the definitions factory."""
    from ais_pipelines.trading_env import trading_env_for

    env, root = environment(), runtime_dir()
    return OpsEnv(env, root, str(warehouse_path(root)), trading_env_for(env, str(root)))


def _die(message: str, code: int = 1) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(code)


def _refused(exc: Any) -> typer.Exit:
    """``REASON_CODE: message`` of a ControlError (its first reason code)."""
    codes = [str(c) for c in getattr(exc, "reason_codes", ())]
    return _die(f"{codes[0] if codes else 'REFUSED'}: {exc}")


def _now(ops: OpsEnv) -> Any:
    from ais_pipelines.trading_env import control_clock

    _as_of, clock = control_clock(ops.policies(), ops.ledger.store(), ops.settings["execution_clock"])
    return clock.now()


def _show(frame: Any, empty: str) -> None:
    typer.echo(empty if frame.empty else frame.to_string(index=False))


# --------------------------------------------------------------------------------------------
# review


@review_app.command("list")
def review_list(
    status: ReviewStatus = typer.Option(ReviewStatus.PENDING, case_sensitive=False, help="Which items."),
) -> None:
    """Items waiting for (or decided by) a person."""
    from ais_pipelines import control

    ops = ops_env()
    frame = control.list_reviews(ops.ledger.store(), None if status is ReviewStatus.ALL else status.value)
    frame = frame.drop(columns=["created_at"]).round({"qty": 4}).astype(object)
    _show(frame.where(frame.notna(), "-"), f"no {status.value} review items")


@review_app.command("approve")
def review_approve(item_id: str, actor: str = ACTOR, why: str = WHY) -> None:
    """Approve one item: hard rules re-checked with a fresh quote, signed, submitted through the OMS."""
    from ais_pipelines import control

    ops = ops_env()
    s = ops.settings
    try:
        out = control.approve_item(ops.policies(), ops.warehouse, s["ledger"], s["signing_key"],
                                   s["execution_clock"], s["broker"], item_id, actor=actor, why=why)
    except control.ControlError as exc:
        raise _refused(exc) from exc
    price = f"{out['avg_fill_price']:.4f}" if out["avg_fill_price"] else "-"
    typer.echo(f"APPROVED {item_id} by {actor}: {out['side']} {out['qty']:g} {out['symbol']} → {out['state']} "
               f"(filled {out['filled_qty']:g} @ {price}, order {out['client_order_id']})")


@review_app.command("reject")
def review_reject(item_id: str, actor: str = ACTOR, why: str = WHY) -> None:
    """Reject one item (recorded with who and why; nothing is sent)."""
    from ais_pipelines import control

    ops = ops_env()
    store = ops.ledger.store()
    try:
        item = control.reject_review(store, ops.ledger.audit(), item_id, actor=actor, why=why, now=_now(ops),
                                     policies=ops.policies())
    except control.ControlError as exc:
        raise _refused(exc) from exc
    typer.echo(f"REJECTED {item.item_id} by {item.decided_by}: {item.why}")


# --------------------------------------------------------------------------------------------
# trading state


def describe_status(status: Any) -> str:
    """One line for a trading status; the state of a fresh ledger says so instead of an epoch date."""
    from ais_pipelines.ledger.store import LEDGER_EPOCH

    codes = ";".join(map(str, status.reason_codes)) or "none"
    if status.since == LEDGER_EPOCH:
        return f"{status.mode} (initial state: nobody has changed it since the ledger was created)"
    return f"{status.mode} since {status.since:%Y-%m-%d %H:%M:%S} UTC by {status.actor}: {status.why} [{codes}]"


@trading_app.command("status")
def trading_status_cmd() -> None:
    """The current trading state and who set it, why, when; the review queue."""
    ops = ops_env()
    store = ops.ledger.store()
    typer.echo(describe_status(store.current_trading_status()))
    pending = len(store.list_reviews("PENDING"))
    typer.echo(f"review queue: {pending} pending" + (" (`ais review list`)" if pending else ""))


def _trading(action: str, actor: str, why: str, to: str = "ACTIVE") -> None:
    from ais_pipelines import control

    ops = ops_env()
    store = ops.ledger.store()
    try:
        s = control.change_trading_state(store, ops.ledger.audit(), action, actor=actor, why=why, now=_now(ops),
                                         to=to, policies=ops.policies())
    except control.ControlError as exc:
        raise _refused(exc) from exc
    typer.echo(f"{s.mode} ({action} by {actor}: {why}) [{';'.join(map(str, s.reason_codes)) or 'none'}]")


@trading_app.command("kill")
def trading_kill(actor: str = ACTOR, why: str = WHY) -> None:
    """Kill switch: HALTED, latched until a person resumes."""
    _trading("kill_switch", actor, why)


@trading_app.command("pause")
def trading_pause(actor: str = ACTOR, why: str = WHY) -> None:
    """Pause: no order is sent until a person resumes."""
    _trading("pause", actor, why)


@trading_app.command("resume")
def trading_resume(
    actor: str = ACTOR, why: str = WHY,
    to: ResumeTo = typer.Option(ResumeTo.ACTIVE, case_sensitive=False, help="The state to resume to."),
) -> None:
    """Lift a pause, a deleverage or the kill switch (a named person and a reason are required)."""
    _trading("resume", actor, why, to.value)


@trading_app.command("deleverage")
def trading_deleverage(actor: str = ACTOR, why: str = WHY) -> None:
    """Forced deleverage: only orders that reduce a position may be sent."""
    _trading("deleverage", actor, why)


# --------------------------------------------------------------------------------------------
# audit


@audit_app.command("verify")
def audit_verify() -> None:
    """Walk the hash chain against the last anchor; exit 1 naming the first broken record."""
    from sqlalchemy.exc import SQLAlchemyError

    from ais_pipelines.core.audit import AuditWriteError, verify_store
    from ais_pipelines.ledger.store import SqlAuditStore

    ops = ops_env()
    try:
        store = SqlAuditStore(ops.ledger.store().engine)
        result = verify_store(store, ops.ledger.audit_anchor())
    except (AuditWriteError, SQLAlchemyError, OSError) as exc:  # cannot even read: not OK either
        raise _die(f"AUDIT_CHAIN_BROKEN: cannot read the audit log: {exc}".splitlines()[0]) from None
    if not result.ok:
        raise _die(result.summary())
    last = store.last()
    head = "empty" if last is None else f"head seq {last.seq} hash {last.hash}"
    typer.echo(f"audit chain OK: {result.n_records} records, {head}; {result.anchor_status()}")


# --------------------------------------------------------------------------------------------
# the approval key and where things are


@key_app.command("init")
def key_init() -> None:
    """local/ci: create the development approval key (runtime/approval.key, owner-only) if there is
    none. In prod, set AIS_APPROVAL_KEY or AIS_APPROVAL_KEY_FILE instead (never a default file)."""
    from ais_pipelines.core.approvals import dev_key_path

    path = dev_key_path(runtime_dir())
    existed = path.exists()
    made = ensure_dev_signing_key(runtime_dir(), environment(), export=False)
    if made is None:
        typer.echo("an approval key is configured in the environment (AIS_APPROVAL_KEY[_FILE]); nothing created")
    else:
        typer.echo(f"{'development key exists' if existed else 'created development key'}: {made}")


def paths() -> None:
    """Where the warehouse, ledger, archive, reports and logs of this runtime directory are."""
    for what, where in where_everything_is():
        mark = "" if not isinstance(where, Path) or where.exists() else "  (not yet written)"
        typer.echo(f"{what + ':':<19} {where}{mark}")


# --------------------------------------------------------------------------------------------
# execute


def ensure_dev_signing_key(root: Path, env: str, *, export: bool = False) -> Path | None:
    """local/ci only: when no key is configured in the environment, make sure the development key
    ``{root}/approval.key`` (0600) exists — the key rule then finds it (:func:`find_signing_key`).

    Never in prod, and never when a key is already configured: there the absence of a key must
    stop everything (fail closed). ``export`` also sets ``AIS_APPROVAL_KEY_FILE`` for child processes.
    """
    from ais_pipelines.core.approvals import (
        DEV_KEY_ENVIRONMENTS,
        KEY_ENV,
        KEY_FILE_ENV,
        dev_key_path,
        generate_dev_key_file,
    )

    if os.environ.get(KEY_ENV) or os.environ.get(KEY_FILE_ENV):
        return None
    if env not in DEV_KEY_ENVIRONMENTS:
        raise _die(f"SIGNING_KEY_MISSING: no approval key in {env}; a development key is never created there "
                   f"(set {KEY_ENV} or {KEY_FILE_ENV})")
    path = dev_key_path(root)
    if not path.exists():
        generate_dev_key_file(path)
    if export:
        os.environ[KEY_FILE_ENV] = str(path)
    return path


def execute(
    as_of: str = typer.Option(None, "--as-of", help="As-of session D, YYYY-MM-DD (default: the latest nightly "
                              "partition).", callback=parse_session),
    dev_key: bool = typer.Option(False, "--dev-key", help="local/ci: create and use runtime/approval.key if "
                                 "no signing key is configured."),
) -> None:
    """One intraday execution of D on the configured broker, if every gate is green; prints the result.

    Single flight: the session's lease is taken before anything runs, so a second ``ais execute``
    of the same session refuses (EXECUTION_IN_PROGRESS, exit 1) without touching a broker. Runs
    left behind by a killed process are released first (their pool slots would block this one).
    """
    import uuid

    import dagster as dg

    from ais_pipelines.cli_support import QUIET_LOGS, ensure_dagster_home
    from ais_pipelines.core.reason_codes import ReasonCode
    from ais_pipelines.ledger.leases import ExecutionInProgressError, acquire_lease, release_lease
    from assets import execution as exec_assets
    from resources.runs import (
        CLI_OWNER_PREFIX,
        LEASE_OWNER_TAG,
        lease_owner_gone,
        process_tags,
        reap_dead_runs,
    )
    from sensors.execution import execution_gate

    ensure_dagster_home()
    ops = ops_env()
    if dev_key:
        made = ensure_dev_signing_key(ops.root, ops.env)
        if made is not None:
            typer.echo(f"using development signing key {made}")
    instance = dg.DagsterInstance.get()
    for run_id in reap_dead_runs(instance):
        typer.echo(f"released stale run {run_id} ({ReasonCode.STALE_RUN_RELEASED})")
    store = ops.ledger.store()
    resources = ops.dagster_resources()
    gate = execution_gate(instance, warehouse=resources["warehouse"], ledger=store,
                          execution_clock=resources["execution_clock"], as_of=as_of)
    if gate.reason_code is ReasonCode.ALREADY_EXECUTED:
        typer.echo(f"SKIP {gate.skip_reason()}")
        _print_session(ops, str(gate.as_of))
        return
    if not gate.ok:
        raise _die(f"SKIP {gate.skip_reason()}")
    day = str(gate.as_of)
    owner = f"{CLI_OWNER_PREFIX}{uuid.uuid4()}"
    try:
        acquire_lease(store, day, owner, owner_gone=lease_owner_gone(instance))
    except ExecutionInProgressError as exc:
        raise _die(str(exc)) from exc
    typer.echo(f"executing {day} at {gate.now.isoformat() if gate.now else '?'} ({ops.env}) …")
    # The same job the sensor launches (same name in the UI and for the reconciliation sensor).
    defs = dg.Definitions(
        assets=dg.load_assets_from_modules([exec_assets]),
        asset_checks=dg.load_asset_checks_from_modules([exec_assets]),
        jobs=[exec_assets.intraday_execution_job],
        resources=resources,
    )
    try:
        result = defs.resolve_job_def("intraday_execution_job").execute_in_process(
            partition_key=day,
            instance=instance,
            raise_on_error=False,
            run_config=QUIET_LOGS,
            tags={"ais/as_of": day, "ais/trigger": "cli", LEASE_OWNER_TAG: owner, **process_tags()},
        )
    finally:
        release_lease(store, day, owner)
    for c in result.get_asset_check_evaluations():
        typer.echo(f"  check {c.check_name}: {'passed' if c.passed else 'FAILED'}")
    if not result.success:
        failed = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        for e in failed:
            typer.echo(f"  failed step {e.step_key}: {e.event_specific_data.error.message.strip()}", err=True)
        raise typer.Exit(1)
    _print_session(ops, day)


def _print_session(ops: OpsEnv, as_of: str) -> None:
    import duckdb
    import pandas as pd

    from ais_pipelines.warehouse_store import connect_warehouse

    db = ops.warehouse
    day = pd.Timestamp(as_of).date()
    with connect_warehouse(db, read_only=True) as con:
        def q(sql: str) -> pd.DataFrame:
            try:
                return con.execute(sql, [day]).df()
            except duckdb.CatalogException:
                return pd.DataFrame()

        decisions = q("SELECT symbol, side, decision, reason_codes, approved_qty FROM governance_decisions "
                      "WHERE as_of = ? ORDER BY decision, symbol")
        orders = q("SELECT symbol, side, qty, state, filled_qty, round(avg_fill_price, 4) AS avg_px, reason_codes "
                   "FROM execution_orders WHERE as_of = ? ORDER BY symbol")
        fills = q("SELECT symbol, side, qty, round(price, 4) AS price, round(slippage_bps, 2) AS slippage_bps, ts "
                  "FROM execution_fills WHERE as_of = ? ORDER BY ts, symbol")
        positions = q("SELECT symbol, qty, round(avg_price, 4) AS avg_price, round(mark, 4) AS mark, "
                      "round(market_value, 2) AS value, round(weight, 4) AS weight FROM positions_snapshot "
                      "WHERE as_of = ? ORDER BY symbol")
    typer.echo(f"\nGovernance decisions for {as_of}:")
    _show(decisions, "  (none)")
    typer.echo("\nOrders:")
    _show(orders, "  (none)")
    typer.echo("\nFills:")
    _show(fills, "  (none)")
    typer.echo("\nPositions:")
    _show(positions, "  (none)")
    book = session_book(ops, as_of)
    if book is not None:
        typer.echo(f"\n{book_line(book)}")
    pending = len(ops.ledger.store().list_reviews("PENDING"))
    if pending:
        typer.echo(f"{pending} order(s) wait in the review queue: `ais review list`")


def session_book(ops: OpsEnv, as_of: str) -> dict[str, Any] | None:
    """The book at the end of the session D's orders execute in (the session after D): the one
    function of the report, the metrics and the marts (``core.metrics.book_history``) over the
    ledger's fills, marked at the close, else the day's last fill. None before the first fill."""
    from dataclasses import asdict

    import duckdb
    import pandas as pd
    from sqlalchemy import select

    from ais_pipelines.core.metrics import book_history
    from ais_pipelines.ledger import models as m
    from ais_pipelines.trading_env import session_after
    from ais_pipelines.warehouse_store import connect_warehouse

    store = ops.ledger.store()
    fills = pd.DataFrame([asdict(f) for f in store.fills()])
    if fills.empty:
        return None
    with store.engine.connect() as conn:
        acct = conn.execute(select(m.paper_account.c.starting_cash)
                            .order_by(m.paper_account.c.created_at, m.paper_account.c.account_id)).first()
    starting = float(acct[0]) if acct is not None else float(ops.policies().mandate.nav)
    end = session_after(as_of).date()
    try:
        with connect_warehouse(ops.warehouse, read_only=True) as con:
            closes = con.execute("SELECT symbol, date, close FROM bars WHERE list_contains(?, symbol) AND date <= ?",
                                 [sorted(fills["symbol"].unique()), end]).df()
    except duckdb.Error:
        closes = pd.DataFrame(columns=["symbol", "date", "close"])
    history, _per_fill, _marks = book_history(fills, closes, starting_cash=starting, end=end)
    if history.empty:
        return None
    return {**history.iloc[-1].to_dict(), "session": end}


def book_line(book: dict[str, Any]) -> str:
    nav = float(book["nav"])
    gross = float(book["gross_exposure"])
    return (f"Book at the end of {book['session']} (ledger fills; marks: the close, else the last fill): "
            f"NAV {nav:,.2f}, P&L that day {float(book['daily_pnl']):+,.2f}, drawdown {float(book['drawdown']):.2%}, "
            f"gross exposure {gross:,.2f} ({gross / nav:.2%} of NAV)")


# --------------------------------------------------------------------------------------------
# runs (issue 10): a crashed or stuck run, and the operator command that releases it


@runs_app.command("stuck")
def runs_stuck() -> None:
    """Runs the instance believes are running, whether their process is alive, and session leases."""
    import dagster as dg

    from ais_pipelines.cli_support import ensure_dagster_home
    from ais_pipelines.ledger.leases import list_leases
    from resources.runs import HOST_TAG, LIVE_STATUSES, PID_TAG, run_process_gone

    ensure_dagster_home()
    with dg.DagsterInstance.get() as instance:
        records = instance.get_run_records(dg.RunsFilter(statuses=LIVE_STATUSES))
        for rec in records:
            r = rec.dagster_run
            state = "PROCESS GONE (release it)" if run_process_gone(r) else "alive or not ours"
            typer.echo(f"{r.run_id} {r.job_name} {r.status.value} pid {r.tags.get(PID_TAG, '?')} on "
                       f"{r.tags.get(HOST_TAG, '?')} since {rec.start_time or '?'}: {state}")
        pools = {k: instance.event_log_storage.get_concurrency_info(k).active_run_ids
                 for k in instance.event_log_storage.get_concurrency_keys()}
    if not records:
        typer.echo("no started runs")
    for key, ids in pools.items():
        typer.echo(f"pool {key}: slots held by {sorted(ids) or 'nobody'}")
    for lease in list_leases(ops_env().ledger.store()):
        typer.echo(f"lease {lease.session}: {lease.owner} pid {lease.owner_pid} on {lease.owner_host} "
                   f"until {lease.expires_at:%Y-%m-%d %H:%M:%S}Z")


@runs_app.command("release")
def runs_release(run_id: str, actor: str = ACTOR, why: str = WHY) -> None:
    """Mark a stuck run failed, free its pool slots and its session lease (audited). Its orders are
    recovered by the next execution; nothing is cancelled at the broker."""
    import dagster as dg

    from ais_pipelines import control
    from ais_pipelines.cli_support import ensure_dagster_home
    from ais_pipelines.core.reason_codes import ReasonCode
    from ais_pipelines.ledger.leases import current_lease, force_release
    from resources.runs import LEASE_OWNER_TAG

    ops = ops_env()
    try:
        who = control.authorize(ops.policies(), actor, "resume")
    except control.ControlError as exc:
        raise _refused(exc) from exc
    ensure_dagster_home()
    with dg.DagsterInstance.get() as instance:
        run = instance.get_run_by_id(run_id)
        if run is None:
            raise _die(f"{ReasonCode.USAGE_ERROR}: no run {run_id}", 2)
        if not run.is_finished:
            instance.report_run_failed(run, f"{ReasonCode.STALE_RUN_RELEASED}: released by {who}: {why}")
        instance.event_log_storage.free_concurrency_slots_for_run(run_id)
    store = ops.ledger.store()
    session = run.tags.get("ais/as_of") or run.tags.get("dagster/partition")
    owner = run.tags.get(LEASE_OWNER_TAG) or run_id
    dropped = None
    if session:
        held = current_lease(store, session)
        if held is not None and held.owner == owner:
            dropped = force_release(store, session)
    now = _now(ops)
    ops.ledger.audit().append("run.released", who, f"run:{run_id}",
                              {"why": why, "session": session, "lease_released": dropped is not None},
                              [ReasonCode.STALE_RUN_RELEASED], now)
    typer.echo(f"released run {run_id} ({run.job_name}, session {session or '-'}): marked failed, pool slots "
               f"freed{', lease released' if dropped else ''}. The next execution recovers its orders.")


def register(app: typer.Typer) -> None:
    """Mount every operator command on the ``ais`` app."""
    app.add_typer(review_app, name="review")
    app.add_typer(trading_app, name="trading")
    app.add_typer(audit_app, name="audit")
    app.add_typer(runs_app, name="runs")
    app.add_typer(key_app, name="key")
    app.command("paths")(paths)
    app.command("execute")(execute)
