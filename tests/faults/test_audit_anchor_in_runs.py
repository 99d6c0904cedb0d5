"""Issue 10 item 4: every execution run publishes the audit head outside the ledger; a truncated
tail is then caught by the next run's check and by ``ais audit verify``."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import delete, func, select

from ais_pipelines.core.trading_state import TradingMode
from ais_pipelines.ledger import models as m
from ais_pipelines.ledger.store import LedgerStore
from resources.trading import BrokerResource
from tests.faults.crash_harness import run_job
from tests.faults.test_crash_recovery import ASSETS, TWO, _resources, signing_env  # noqa: F401
from tests.integration.test_execution import D, write_nightly


def test_each_run_publishes_the_head_and_a_cut_tail_is_caught(tmp_path: Path, policies_dir: Path,
                                                              signing_env: None) -> None:  # noqa: F811
    root = tmp_path / "runtime"
    root.mkdir()
    write_nightly(root / "warehouse.duckdb", spec=TWO)
    res = _resources(root, policies_dir, BrokerResource(kind="paper"))
    result = run_job(ASSETS, D, res)
    assert result.success
    store = LedgerStore.open(f"sqlite:///{root / 'ledger.sqlite'}")
    with store.transaction() as conn:
        n = conn.execute(select(func.count()).select_from(m.audit_log)).scalar_one()
    meta = next(e.materialization.metadata for e in result.get_asset_materialization_events()
                if e.materialization.asset_key.to_user_string() == "audit_head")
    assert meta["audit_head_seq"].value == n > 5
    anchor = json.loads((root / "audit_anchor.json").read_text())
    assert anchor["seq"] >= n and len(anchor["hash"]) == 64

    # Someone deletes the last three records: the chain alone still "verifies", the anchor does not.
    with store.engine.begin() as conn:
        conn.execute(delete(m.audit_log).where(m.audit_log.c.seq > n - 3))
    again = run_job(ASSETS, D, res)
    assert not again.success
    status = store.current_trading_status()
    assert status.mode is TradingMode.HALTED and "AUDIT_CHAIN_BROKEN" in map(str, status.reason_codes)
