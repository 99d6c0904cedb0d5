"""Kill -9 crash suite (issue 10, §I2): 0 lost, 0 duplicated, every intent resolved.

Measured on the main before the fix: a run killed between an order's intent and the broker
call, then re-run, answered the stuck intents from the ledger as "duplicates" without sending
them, finished green and closed the session (6 of 10 orders never reached the broker).

Each trial: the intraday execution job of D (two approvable orders) runs in a forked child,
which is SIGKILLed at one of five points of the first or the second order; the restart is a
new run of the same job. Afterwards every approval has exactly one broker order, no intent is
unresolved, and the session is closed. On the embedded paper broker and on the Alpaca paper
adapter against the stub server (real wire format, on 127.0.0.1).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from dagster_duckdb import DuckDBResource

from ais_pipelines import execution as ex
from ais_pipelines.brokers.paper import QuoteSource
from ais_pipelines.execution import MarketSnapshot
from ais_pipelines.ledger.store import LedgerStore
from resources.policies import PoliciesResource
from resources.trading import BrokerResource, ExecutionClockResource, LedgerResource, SigningKeyResource
from tests.faults.crash_harness import POINTS, RigSpec, crash_then_restart, rig_env
from tests.integration.test_execution import EXECUTION_ASSETS, EXECUTION_CHECKS, D, query, write_nightly
from tests.stubs.alpaca_trading_stub import AlpacaTradingStub

# Two orders the shipped policy approves.
TWO = {
    "AAPL": ("BUY", 100.0, 180.0, 0.92, 0.80, "PROPOSED", "ALLOCATED"),
    "XOM": ("BUY", 50.0, 110.0, 0.90, 0.85, "PROPOSED", "ALLOCATED"),
}
ASSETS = [*EXECUTION_ASSETS, *EXECUTION_CHECKS]
CHILD_ENV = ("AIS_APPROVAL_KEY", "AIS_ENV", "APCA_API_KEY_ID", "APCA_API_SECRET_KEY")


class AlpacaBrokerWithSampleQuotes(BrokerResource):
    """Orders through the Alpaca adapter (stub server); quotes from the sample source, so the
    trial exercises Alpaca's order path only."""

    def quote_source(self, snapshot: MarketSnapshot, session_open: Any) -> QuoteSource:
        return BrokerResource(kind="paper", quote_seed=self.quote_seed).quote_source(snapshot, session_open)


class FillingStub(AlpacaTradingStub):
    """Alpaca fills a market order as soon as it accepts it (so the after_fill point exists)."""

    def _post_order(self, req: Any) -> Any:
        resp = super()._post_order(req)
        if getattr(resp, "status", 200) == 200:
            self.fill(resp.body["id"])
        return resp


@pytest.fixture()
def signing_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIS_APPROVAL_KEY", "5a" * 32)
    monkeypatch.delenv("AIS_APPROVAL_KEY_FILE", raising=False)
    monkeypatch.setenv("AIS_ENV", "ci")


def _resources(root: Path, policies_dir: Path, broker: BrokerResource) -> dict[str, Any]:
    return {
        "policies": PoliciesResource(directory=str(policies_dir)),
        "warehouse": DuckDBResource(database=str(root / "warehouse.duckdb")),
        "ledger": LedgerResource(url=f"sqlite:///{root / 'ledger.sqlite'}", runtime_root=str(root)),
        "signing_key": SigningKeyResource(),
        "execution_clock": ExecutionClockResource(mode="simulated"),
        "broker": broker,
    }


def _paper_orders(db: Path) -> dict[str, int]:
    con = sqlite3.connect(db)
    try:
        rows = con.execute("SELECT client_order_id, count(*) FROM paper_orders GROUP BY client_order_id").fetchall()
    finally:
        con.close()
    return {cid: n for cid, n in rows}


def _stub_orders(stub: AlpacaTradingStub) -> dict[str, int]:
    out: dict[str, int] = {}
    for o in list(stub.orders.values()):
        out[o["client_order_id"]] = out.get(o["client_order_id"], 0) + 1
    return out


def outcome(root: Path, broker_orders: dict[str, int]) -> dict[str, Any]:
    """lost / duplicated / unresolved / marker after the restart."""
    db = root / "warehouse.duckdb"
    decisions = query(db, "SELECT approval_id FROM governance_decisions WHERE as_of = ? AND decision = 'APPROVE'",
                      [pd.Timestamp(D).date()])
    store = LedgerStore.open(f"sqlite:///{root / 'ledger.sqlite'}")
    try:
        by_approval = {o.approval_id: o.client_order_id for o in store.list_orders()}
        approvals = list(decisions["approval_id"])
        lost = [a for a in approvals if broker_orders.get(by_approval.get(a, ""), 0) == 0]
        return {
            "approvals": len(approvals),
            "lost": len(lost),
            "duplicated": sum(max(0, n - 1) for n in broker_orders.values()) + max(0, len(broker_orders) - len(approvals)),
            "unresolved": len(ex.unresolved_intents(store, D)),
            "marker": ex.executed_marker(store, D) is not None,
            "halted": str(store.current_trading_status().mode) != "ACTIVE",
            "states": sorted(str(o.state) for o in store.list_orders()),
        }
    finally:
        store.dispose()


TRIALS = [(p, k) for p in POINTS for k in (1, 2)]


def paper_trial(workdir: Path, policies_dir: Path, point: str, k: int) -> dict[str, Any]:
    """One kill -9 trial on the embedded paper broker; the outcome after the restart."""
    root = workdir / "runtime"
    root.mkdir()
    write_nightly(root / "warehouse.duckdb", spec=TWO)

    spec = RigSpec(str(root), str(policies_dir), env=rig_env(*CHILD_ENV))
    killed, result = crash_then_restart(point, k, workdir, spec, D)
    return {"killed": killed, "restart_ok": result.success, **outcome(root, _paper_orders(root / "ledger.sqlite"))}


def alpaca_trial(workdir: Path, policies_dir: Path, point: str, k: int) -> dict[str, Any]:
    """The same on the Alpaca paper adapter against the stub server (keys set for the trial only)."""
    root = workdir / "runtime"
    root.mkdir()
    write_nightly(root / "warehouse.duckdb", spec=TWO)
    with FillingStub(prices={"AAPL": 180.0, "XOM": 110.0}, cash=1_000_000.0) as stub:
        saved = {k_: os.environ.get(k_) for k_ in ("APCA_API_KEY_ID", "APCA_API_SECRET_KEY")}
        os.environ["APCA_API_KEY_ID"], os.environ["APCA_API_SECRET_KEY"] = stub.api_key, stub.secret_key
        try:
            spec = RigSpec(str(root), str(policies_dir), broker="alpaca_paper", alpaca_url=stub.base_url,
                           env=rig_env(*CHILD_ENV))
            killed, result = crash_then_restart(point, k, workdir, spec, D)
        finally:
            for k_, v in saved.items():
                if v is None:
                    os.environ.pop(k_, None)
                else:
                    os.environ[k_] = v
        return {"killed": killed, "restart_ok": result.success, "broker_orders": len(stub.created),
                **outcome(root, _stub_orders(stub))}


EXPECTED = {"killed": True, "restart_ok": True, "approvals": 2, "lost": 0, "duplicated": 0, "unresolved": 0,
            "marker": True, "halted": False}


@pytest.mark.parametrize(("point", "k"), TRIALS, ids=[f"{p}-order{k}" for p, k in TRIALS])
def test_kill9_on_paper_broker_loses_and_duplicates_nothing(tmp_path: Path, policies_dir: Path, signing_env: None,
                                                            point: str, k: int) -> None:
    got = paper_trial(tmp_path, policies_dir, point, k)
    assert {key: got[key] for key in EXPECTED} == EXPECTED, got
    assert "NEW" not in got["states"] and "SUBMITTED" not in got["states"]


@pytest.mark.parametrize(("point", "k"), TRIALS, ids=[f"{p}-order{k}" for p, k in TRIALS])
def test_kill9_on_alpaca_paper_loses_and_duplicates_nothing(tmp_path: Path, policies_dir: Path, signing_env: None,
                                                             point: str, k: int) -> None:
    got = alpaca_trial(tmp_path, policies_dir, point, k)
    assert {key: got[key] for key in EXPECTED} == EXPECTED, got
    assert got["broker_orders"] == 2
