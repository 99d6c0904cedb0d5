"""Single flight and no stall (issue 10, items 2 and 3).

Measured on the main before the fix: two ``ais execute`` of the same session at once both ran
(only a marker written at the end guarded a session), and after a killed run every later run
of the ``duckdb`` pool waited forever for the slot the dead run still held.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import typer
from typer.testing import CliRunner

from ais_pipelines import cli_ops
from ais_pipelines.core.reason_codes import ReasonCode
from ais_pipelines.ledger.leases import (
    ExecutionInProgressError,
    acquire_lease,
    current_lease,
    release_lease,
)
from ais_pipelines.ledger.store import LedgerStore
from resources.trading import BrokerResource
from tests.faults.crash_harness import _context, _install, rig_env, run_job
from tests.faults.test_crash_recovery import ASSETS, TWO, _paper_orders, _resources
from tests.integration.test_execution import D, write_nightly
from tests.integration.test_execution_sensor import stand_ins

KEY_HEX = "5a" * 32


@pytest.fixture()
def env(tmp_path: Path, policies_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "runtime"
    root.mkdir()
    write_nightly(root / "warehouse.duckdb", spec=TWO)
    home = tmp_path / "dagster_home"
    home.mkdir()
    # The shipped instance config: one slot in the duckdb pool.
    (home / "dagster.yaml").write_text((Path(__file__).parents[2] / "dagster.yaml").read_text())
    for k, v in {"AIS_RUNTIME_DIR": root, "AIS_WAREHOUSE": root / "warehouse.duckdb", "AIS_POLICIES_DIR": policies_dir,
                 "DAGSTER_HOME": home, "AIS_APPROVAL_KEY": KEY_HEX, "AIS_ENV": "ci"}.items():
        monkeypatch.setenv(k, str(v))
    monkeypatch.delenv("AIS_APPROVAL_KEY_FILE", raising=False)
    monkeypatch.delenv("AIS_LEDGER_URL", raising=False)
    with dg.DagsterInstance.get() as instance:  # the nightly gates of D passed
        dg.materialize(stand_ins({}), partition_key=D, instance=instance)
    return root


def _cli() -> tuple[CliRunner, typer.Typer]:
    app = typer.Typer()
    cli_ops.register(app)
    return CliRunner(), app


CHILD_ENV = ("AIS_RUNTIME_DIR", "AIS_WAREHOUSE", "AIS_POLICIES_DIR", "DAGSTER_HOME", "AIS_APPROVAL_KEY", "AIS_ENV")


def _in_child(env: tuple[tuple[str, str], ...], fn: str, *args: Any) -> None:
    os.environ.pop("AIS_LEDGER_URL", None)
    os.environ.pop("AIS_APPROVAL_KEY_FILE", None)
    os.environ.update(dict(env))
    globals()[fn](*args)


def _process(fn: str, *args: Any) -> Any:
    """A child from the clean forkserver (never a fork of the test process), with this test's env."""
    return _context().Process(target=_in_child, args=(rig_env(*CHILD_ENV), fn, *args))


def _store(root: Path) -> LedgerStore:
    return LedgerStore.open(f"sqlite:///{root / 'ledger.sqlite'}")


def _blocked_cli_execute(point: str, flag: str) -> None:
    """Child: ``ais execute`` that stops (alive, holding what it holds) at ``point`` of order 1."""
    _install(point, 1, Path(flag))
    runner, app = _cli()
    runner.invoke(app, ["execute", "--as-of", D])
    os._exit(0)


def _start_blocked(point: str, tmp: Path) -> mp.Process:
    flag = tmp / f"blocked-{point}"
    proc = _process("_blocked_cli_execute", point, str(flag))
    proc.start()
    deadline = time.monotonic() + 60
    while not flag.exists():
        assert proc.is_alive() and time.monotonic() < deadline, "the child never reached its blocking point"
        time.sleep(0.05)
    return proc


def _kill(proc: mp.Process) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)


# --------------------------------------------------------------------------------------------
# the lease itself


def test_lease_is_single_flight_renewable_and_taken_over_only_from_the_dead(tmp_path: Path) -> None:
    store = LedgerStore.open(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    t0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    first = acquire_lease(store, D, "run-a", now=t0, ttl_s=60)
    assert first.owner == "run-a" and first.owner_pid == os.getpid()
    with pytest.raises(ExecutionInProgressError) as refused:
        acquire_lease(store, D, "run-b", now=t0 + timedelta(seconds=30), ttl_s=60)
    assert refused.value.reason_code is ReasonCode.EXECUTION_IN_PROGRESS and "run-a" in str(refused.value)
    renewed = acquire_lease(store, D, "run-a", now=t0 + timedelta(seconds=50), ttl_s=60)
    assert renewed.expires_at == t0 + timedelta(seconds=110)
    # Still alive (this very process) but the lease ran out: taken over, the change is visible.
    taken = acquire_lease(store, D, "run-b", now=t0 + timedelta(seconds=111), ttl_s=60)
    assert taken.taken_over_from == "run-a" and current_lease(store, D).owner == "run-b"
    # The owner declared gone by the caller (its Dagster run failed): taken over before expiry.
    again = acquire_lease(store, D, "run-c", now=t0 + timedelta(seconds=112), owner_gone=lambda lease: True)
    assert again.taken_over_from == "run-b"
    assert not release_lease(store, D, "run-a") and release_lease(store, D, "run-c")
    assert current_lease(store, D) is None
    # Another session is independent.
    acquire_lease(store, "2024-03-05", "run-x", now=t0)
    acquire_lease(store, D, "run-y", now=t0)


def _hold_lease(db: str) -> None:
    acquire_lease(LedgerStore.open(f"sqlite:///{db}"), D, "cli:dead")
    time.sleep(600)


def test_lease_of_a_killed_process_is_taken_over_at_once(tmp_path: Path) -> None:
    store = LedgerStore.open(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    proc = _process("_hold_lease", str(tmp_path / "ledger.sqlite"))
    proc.start()
    deadline = time.monotonic() + 30
    while current_lease(store, D) is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with pytest.raises(ExecutionInProgressError):
        acquire_lease(store, D, "cli:me")
    _kill(proc)
    assert acquire_lease(store, D, "cli:me").taken_over_from == "cli:dead"


# --------------------------------------------------------------------------------------------
# two executions of one session


def test_second_execution_refuses_while_the_first_runs_then_takes_over_after_kill9(env: Path, tmp_path: Path,
                                                                                    policies_dir: Path) -> None:
    proc = _start_blocked("after_intent", tmp_path)  # the first: alive, one intent written, nothing sent
    try:
        runner, app = _cli()
        second = runner.invoke(app, ["execute", "--as-of", D])
        assert second.exit_code == 1, second.output
        assert "EXECUTION_IN_PROGRESS" in second.output
        # The job itself refuses too (a sensor-launched run, an operator's re-execution in the UI).
        job = run_job(ASSETS, D, _resources(env, policies_dir, BrokerResource(kind="paper")))
        assert not job.success
        failure = next(e for e in job.all_events if e.event_type_value == "STEP_FAILURE")
        assert failure.step_key == "execution_context"
        assert "EXECUTION_IN_PROGRESS" in failure.event_specific_data.error.message
        assert _paper_orders(env / "ledger.sqlite") == {}  # neither touched the broker
    finally:
        _kill(proc)
    runner, app = _cli()
    third = runner.invoke(app, ["execute", "--as-of", D])
    assert third.exit_code == 0, third.output
    assert sorted(_paper_orders(env / "ledger.sqlite").values()) == [1, 1]
    assert current_lease(_store(env), D) is None  # released at the end


def _racer(start: Any, out: str) -> None:
    from ais_pipelines.brokers.paper import PaperBroker

    orig = PaperBroker.submit_order

    def slow(self: Any, *a: Any, **kw: Any) -> Any:
        time.sleep(1.0)  # the execution takes long enough for the other to try in the meantime
        return orig(self, *a, **kw)

    PaperBroker.submit_order = slow  # type: ignore[method-assign]
    runner, app = _cli()
    start.wait()
    res = runner.invoke(app, ["execute", "--as-of", D])
    Path(out).write_text(f"{res.exit_code}\n{res.output}")
    os._exit(0)


def test_two_concurrent_cli_executions_exactly_one_runs(env: Path, tmp_path: Path) -> None:
    start = _context().Event()
    outs = [tmp_path / f"racer-{i}.txt" for i in range(2)]
    procs = [_process("_racer", start, str(o)) for o in outs]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    results = [o.read_text().split("\n", 1) for o in outs]
    codes = sorted(int(c) for c, _ in results)
    assert codes == [0, 1], results
    loser = next(text for c, text in results if c == "1")
    assert "EXECUTION_IN_PROGRESS" in loser
    assert sorted(_paper_orders(env / "ledger.sqlite").values()) == [1, 1]  # one order per approval


# --------------------------------------------------------------------------------------------
# a killed run never blocks the next


def _slots_claimed(home: Path) -> int:
    con = sqlite3.connect(home / "history" / "runs.db") if (home / "history" / "runs.db").exists() else None
    if con is None:
        return 0
    try:
        return con.execute("SELECT count(*) FROM concurrency_slots WHERE run_id IS NOT NULL").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        con.close()


def test_a_killed_run_does_not_block_the_next_one(env: Path, tmp_path: Path) -> None:
    proc = _start_blocked("after_submitted", tmp_path)  # holds the duckdb pool slot when killed
    _kill(proc)
    with dg.DagsterInstance.get() as instance:
        stuck = instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
        assert len(stuck) == 1  # the dead run still looks alive to Dagster …
        info = instance.event_log_storage.get_concurrency_info("duckdb")
        assert info.active_run_ids == {stuck[0].dagster_run.run_id}  # … and holds the only slot

    # The next execution starts at once: the dead run is released, then the session recovered.
    out = tmp_path / "next.txt"
    began = time.monotonic()
    p = _process("_cli_execute", D, str(out))
    p.start()
    p.join(90)
    if p.is_alive():
        _kill(p)
        pytest.fail("the next run waited for the dead run's pool slot")
    took = time.monotonic() - began
    code, text = out.read_text().split("\n", 1)
    assert code == "0", text
    assert "released stale run" in text and took < 60
    assert sorted(_paper_orders(env / "ledger.sqlite").values()) == [1, 1]
    with dg.DagsterInstance.get() as instance:
        dead = instance.get_run_by_id(stuck[0].dagster_run.run_id)
        assert dead.status is dg.DagsterRunStatus.FAILURE
        assert instance.event_log_storage.get_concurrency_info("duckdb").active_run_ids == set()


def test_operator_lists_and_releases_a_stuck_run(env: Path, tmp_path: Path) -> None:
    proc = _start_blocked("after_submitted", tmp_path)
    _kill(proc)
    runner, app = _cli()
    listed = runner.invoke(app, ["runs", "stuck"])
    assert listed.exit_code == 0 and "PROCESS GONE" in listed.output and f"lease {D}: cli:" in listed.output
    with dg.DagsterInstance.get() as instance:
        (rec,) = instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
    run_id = rec.dagster_run.run_id
    refused = runner.invoke(app, ["runs", "release", run_id, "--actor", "oms", "--why", "x"])
    assert refused.exit_code != 0 and "ACTOR_NOT_AUTHORIZED" in str(refused.output) + str(refused.exception)
    ok = runner.invoke(app, ["runs", "release", run_id, "--actor", "Jane.Doe", "--why", "worker OOM-killed"])
    assert ok.exit_code == 0, ok.output
    assert "pool slots freed" in ok.output
    with dg.DagsterInstance.get() as instance:
        assert instance.get_run_by_id(run_id).status is dg.DagsterRunStatus.FAILURE
        assert instance.event_log_storage.get_concurrency_info("duckdb").active_run_ids == set()
    # The CLI owned that lease (its token), not the run id: the next execution takes it over (pid dead).
    nxt = runner.invoke(app, ["execute", "--as-of", D])
    assert nxt.exit_code == 0, nxt.output
    assert sorted(_paper_orders(env / "ledger.sqlite").values()) == [1, 1]


def _cli_execute(as_of: str, out: str) -> None:
    runner, app = _cli()
    res = runner.invoke(app, ["execute", "--as-of", as_of])
    Path(out).write_text(f"{res.exit_code}\n{res.output}\n{res.exception!r}")
    os._exit(0)


def _blocked_other_session(flag: str) -> None:
    _install("after_submitted", 1, Path(flag))
    runner, app = _cli()
    runner.invoke(app, ["execute", "--as-of", "2024-03-05"])
    os._exit(0)


@pytest.mark.timeout(180)
def test_sigterm_stops_an_execution_waiting_for_the_pool(env: Path, tmp_path: Path) -> None:
    """``timeout`` (SIGTERM) must stop an ``ais execute`` that waits for the duckdb pool slot a
    live run of another session holds; both sessions then complete."""
    write_nightly(env / "warehouse.duckdb", as_of="2024-03-05", spec=TWO)
    with dg.DagsterInstance.get() as instance:
        dg.materialize(stand_ins({}), partition_key="2024-03-05", instance=instance)
    flag = tmp_path / "other-session"
    holder = _process("_blocked_other_session", str(flag))
    holder.start()
    waiter = None
    try:
        deadline = time.monotonic() + 60
        while not flag.exists():
            assert holder.is_alive() and time.monotonic() < deadline
            time.sleep(0.05)
        waiter = _process("_cli_execute", D, str(tmp_path / "waiter.txt"))
        waiter.start()
        time.sleep(5)
        with dg.DagsterInstance.get() as instance:
            holders = instance.event_log_storage.get_concurrency_info("duckdb").active_run_ids
        assert waiter.is_alive() and len(holders) == 1  # waiting: the live holder keeps the only slot
        began = time.monotonic()
        os.kill(waiter.pid, signal.SIGTERM)
        waiter.join(20)
        assert not waiter.is_alive(), "SIGTERM did not stop the waiting execution"
        assert time.monotonic() - began < 20
        # Either Dagster turned it into an interrupt (the CLI exits 130) or the default action ended
        # the process (-15): both stop at once, and a stop anywhere is safe (recovery, lease by pid).
        out = tmp_path / "waiter.txt"
        assert (out.exists() and out.read_text().split("\n", 1)[0] == "130") or waiter.exitcode == -signal.SIGTERM
    finally:
        if waiter is not None and waiter.is_alive():
            _kill(waiter)
        _kill(holder)
    assert _paper_orders(env / "ledger.sqlite") == {}  # the other session's order never left (held at SUBMITTED)
    runner, app = _cli()
    assert runner.invoke(app, ["execute", "--as-of", "2024-03-05"]).exit_code == 0
    nxt = runner.invoke(app, ["execute", "--as-of", D])
    assert nxt.exit_code == 0, nxt.output
    sent = _paper_orders(env / "ledger.sqlite")
    assert len(sent) >= 2 and set(sent.values()) == {1}  # recovered and sent, never twice
