"""Kill -9 harness for the intraday execution (issue 10).

:func:`crash_then_restart` runs the intraday execution job of one session in a forked child
process whose OMS/broker/ledger block at a chosen point of the k-th order (the child writes a
file and sleeps), SIGKILLs the child there, then restarts the way the product restarts — a new
run of the same job (what the execution sensor launches and ``ais execute`` runs) — and
returns what the broker and the ledger hold afterwards.

Points, in the order an order passes them:

=================  ===========================================================================
after_intent       the intent (NEW, approval consumed) is in the ledger; nothing else
after_submitted    the order is SUBMITTED in the ledger; the broker call has not started
in_broker_call     the broker has the order; its acknowledgement never reached the ledger
after_ack          the acknowledgement was applied (ACCEPTED); the run dies before going on
after_fill         a fill was applied to the ledger; the session marker is not written
=================  ===========================================================================
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

POINTS = ("after_intent", "after_submitted", "in_broker_call", "after_ack", "after_fill")


def _block(flag: Path) -> None:
    flag.write_text(str(os.getpid()))
    time.sleep(600)  # SIGKILLed here
    os._exit(3)  # pragma: no cover - only if nobody kills us


def _install(point: str, k: int, flag: Path) -> None:
    """Patch, in the child only, the place named by ``point`` to block on its ``k``-th pass."""
    from ais_pipelines.brokers.alpaca import AlpacaPaperBroker
    from ais_pipelines.brokers.paper import PaperBroker
    from ais_pipelines.core.order_states import OrderEvent
    from ais_pipelines.ledger.store import LedgerStore
    from ais_pipelines.oms.oms import OrderManagementSystem

    seen = {"n": 0}

    def hit() -> None:
        seen["n"] += 1
        if seen["n"] == k:
            _block(flag)

    if point == "after_intent":
        orig = LedgerStore.create_order_intent

        def create(self: Any, *a: Any, **kw: Any) -> Any:
            out = orig(self, *a, **kw)
            hit()
            return out

        LedgerStore.create_order_intent = create  # type: ignore[method-assign]
    elif point == "after_submitted":
        orig_ev = LedgerStore.apply_order_event

        def apply_event(self: Any, cid: str, event: Any, *a: Any, **kw: Any) -> Any:
            out = orig_ev(self, cid, event, *a, **kw)
            if event is OrderEvent.SUBMIT:
                hit()
            return out

        LedgerStore.apply_order_event = apply_event  # type: ignore[method-assign]
    elif point == "in_broker_call":
        for cls in (PaperBroker, AlpacaPaperBroker):
            def wrap(orig_submit: Callable[..., Any]) -> Callable[..., Any]:
                def submit(self: Any, *a: Any, **kw: Any) -> Any:
                    out = orig_submit(self, *a, **kw)
                    hit()  # the broker has it; the answer dies with us
                    return out
                return submit
            cls.submit_order = wrap(cls.submit_order)  # type: ignore[method-assign]
    elif point == "after_ack":
        orig_send = OrderManagementSystem._send

        def send(self: Any, *a: Any, **kw: Any) -> Any:
            out = orig_send(self, *a, **kw)
            hit()
            return out

        OrderManagementSystem._send = send  # type: ignore[method-assign]
    elif point == "after_fill":
        orig_state = LedgerStore.apply_broker_state

        def apply_state(self: Any, *a: Any, **kw: Any) -> Any:
            out = orig_state(self, *a, **kw)
            if out.new_fills:
                hit()
            return out

        LedgerStore.apply_broker_state = apply_state  # type: ignore[method-assign]
    else:  # pragma: no cover
        raise ValueError(point)


def run_job(assets: list[Any], partition: str, resources: dict[str, Any], tags: dict[str, str] | None = None,
            ) -> dg.ExecuteInProcessResult:
    return dg.materialize(assets, partition_key=partition, resources=resources,
                          instance=dg.DagsterInstance.ephemeral(), raise_on_error=False, tags=tags or {})


@dataclass(frozen=True)
class RigSpec:
    """Everything a child needs to build the execution run, as plain (picklable) data: children
    start from a clean forkserver, never from a fork of the test process (whose threads — DuckDB,
    Dagster — can leave a forked child deadlocked or crashed)."""

    root: str
    policies_dir: str
    broker: str = "paper"  # paper | alpaca_paper
    alpaca_url: str | None = None
    env: tuple[tuple[str, str], ...] = ()

    def resources(self) -> dict[str, Any]:
        from resources.trading import BrokerResource
        from tests.faults.test_crash_recovery import AlpacaBrokerWithSampleQuotes, _resources

        broker = (AlpacaBrokerWithSampleQuotes(kind="alpaca_paper", alpaca_url=self.alpaca_url)
                  if self.broker == "alpaca_paper" else BrokerResource(kind="paper"))
        return _resources(Path(self.root), Path(self.policies_dir), broker)

    @staticmethod
    def assets() -> list[Any]:
        from tests.faults.test_crash_recovery import ASSETS

        return ASSETS


def rig_env(*names: str) -> tuple[tuple[str, str], ...]:
    """The parent's current values of ``names`` (secrets and settings the child must see)."""
    return tuple((n, os.environ[n]) for n in names if n in os.environ)


_CTX: Any = None


def _context() -> Any:
    global _CTX
    if _CTX is None:
        _CTX = mp.get_context("forkserver")
        _CTX.set_forkserver_preload(["tests.faults.crash_harness", "tests.faults.test_crash_recovery"])
    return _CTX


def _child(point: str, k: int, flag: str, spec: RigSpec, partition: str) -> None:
    os.environ.update(dict(spec.env))
    _install(point, k, Path(flag))
    result = run_job(spec.assets(), partition, spec.resources())
    failures = [f"{e.step_key}: {e.event_specific_data.error.message.strip()[:500]}"
                for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    Path(f"{flag}.unreached").write_text("\n".join(failures) or "run finished")  # why the point was missed
    os._exit(0)  # finished without reaching the point


def crash_then_restart(point: str, k: int, workdir: Path, spec: RigSpec, partition: str,
                       timeout_s: float = 90.0) -> tuple[bool, dg.ExecuteInProcessResult]:
    """Run in a child, crash at ``point`` (k-th pass), SIGKILL, restart once. Returns (killed, restart)."""
    flag = workdir / f"reached-{point}-{k}"
    flag.unlink(missing_ok=True)
    proc = _context().Process(target=_child, args=(point, k, str(flag), spec, partition))
    proc.start()
    deadline = time.monotonic() + timeout_s
    killed = False
    while time.monotonic() < deadline and proc.is_alive():
        if flag.exists():
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.02)
    if proc.is_alive() and not killed:  # pragma: no cover - hung: fail loudly, never leave it running
        os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    missed = Path(f"{flag}.unreached")
    if not killed:
        why = missed.read_text() if missed.exists() else "no report"
        print(f"child never reached {point} #{k} (exit {proc.exitcode}): {why}")
    return killed, run_job(spec.assets(), partition, spec.resources())


def _child_plain(spec: RigSpec, partition: str) -> None:
    os.environ.update(dict(spec.env))
    run_job(spec.assets(), partition, spec.resources())
    os._exit(0)


def crash_at_random_then_restart(delay_s: float, spec: RigSpec, partition: str,
                                 ) -> tuple[bool, dg.ExecuteInProcessResult]:
    """SIGKILL the execution after ``delay_s`` wherever it is, then restart once."""
    proc = _context().Process(target=_child_plain, args=(spec, partition))
    proc.start()
    proc.join(delay_s)
    killed = proc.is_alive()
    if killed:
        os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    return killed, run_job(spec.assets(), partition, spec.resources())
