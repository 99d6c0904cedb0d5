"""§0 intraday, §H3–H5, §I1, §J2–J3: the intraday execution job on the embedded paper broker.

Fixture ``order_proposals`` (and the nightly context tables they are joined with) are written
straight into a tmp warehouse for as-of session D = Mon 2024-03-04; the job then runs for real
(Dagster ``materialize``) on the simulated clock 30 min into Tue 2024-03-05.

The helpers at the top are shared with test_execution_sensor.py and test_control_plane.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import pandas as pd
import pytest
from dagster_duckdb import DuckDBResource
from sqlalchemy import update

from ais_pipelines import control
from ais_pipelines import execution as ex
from ais_pipelines.core.audit import verify_store
from ais_pipelines.core.impact import ORDER_COLUMNS
from ais_pipelines.core.order_states import OrderState
from ais_pipelines.core.policy import PolicyError
from ais_pipelines.core.reason_codes import ReasonCode
from ais_pipelines.core.trading_state import TradingMode, TradingStateError, check_daily_loss, resume
from ais_pipelines.ledger import models as m
from ais_pipelines.ledger.store import SqlAuditStore
from ais_pipelines.warehouse import replace_partition
from assets import execution as exec_assets
from resources.policies import PoliciesResource
from resources.trading import (
    BrokerResource,
    ExecutionClockResource,
    LedgerResource,
    SigningKeyResource,
    control_clock,
    open_reconciliation_session,
)

D = "2024-03-04"  # Monday; executed in the session of Tuesday 2024-03-05 (NYSE opens 14:30 UTC)
EXEC_NOW = datetime(2024, 3, 5, 15, 0, tzinfo=UTC)  # simulated clock: 30 min after the open
KEY_HEX = "5a" * 32
EXECUTION_ASSETS = [
    exec_assets.execution_context,
    exec_assets.approved_orders,
    exec_assets.executed_orders,
    exec_assets.portfolio_state,
    exec_assets.audit_head,
]
EXECUTION_CHECKS = [
    exec_assets.orders_have_valid_approvals,
    exec_assets.nothing_in_review_executed,
    exec_assets.audit_chain_verifies,
]

# symbol: (side, qty, reference close, liquidity, confidence, status, reason codes)
PROPOSALS: dict[str, tuple[str, float, float, float, float, str, str]] = {
    "AAPL": ("BUY", 100.0, 180.0, 0.92, 0.80, "PROPOSED", "ALLOCATED"),  # → APPROVE
    "MSFT": ("BUY", 50.0, 400.0, 0.95, 0.40, "PROPOSED", "ALLOCATED"),  # → REVIEW (LOW_CONFIDENCE)
    "JPM": ("BUY", 200.0, 190.0, 0.50, 0.85, "PROPOSED", "ALLOCATED"),  # → REJECT (LOW_LIQUIDITY)
    "PLD": ("BUY", 10.0, 120.0, 0.90, 0.90, "REJECTED", "MISSING_IMPACT_ESTIMATE"),  # refused upstream
}


def proposals_frame(spec: dict[str, tuple[str, float, float, float, float, str, str]] = PROPOSALS) -> pd.DataFrame:
    rows = []
    for sym, (side, qty, px, _liq, _conf, status, codes) in spec.items():
        rows.append(
            {
                "symbol": sym, "side": side, "qty": qty, "price": px, "notional": qty * px,
                "current_qty": 0.0, "target_qty": qty, "current_weight": 0.0, "target_weight": qty * px / 1e6,
                "participation": 1e-5, "temporary_bps": 0.5, "permanent_bps": 0.25, "half_spread_bps": 1.0,
                "regime_multiplier": 1.0, "impact_bps": 1.75, "impact_cost": qty * px * 1.75e-4,
                "regime": "NORMAL", "style": "PASSIVE", "reduce_only": False, "cvar_change": 0.0,
                "status": status, "reason_codes": codes,
            }
        )
    frame = pd.DataFrame(rows)
    assert list(frame.columns) == ORDER_COLUMNS
    return frame


def write_nightly(
    db: Path,
    as_of: str = D,
    spec: dict[str, tuple[str, float, float, float, float, str, str]] = PROPOSALS,
    *,
    with_proposals: bool = True,
) -> None:
    """The nightly tables the intraday path reads, for session ``as_of``."""
    day = pd.Timestamp(as_of).date()
    syms = list(spec)
    feats = pd.DataFrame(
        {
            "symbol": syms,
            "close": [spec[s][2] for s in syms],
            "ewma_vol": 0.015,
            "adv_usd_20d": 5e9,
            "spread_bps_est": 2.0,
            "liquidity_score": [spec[s][3] for s in syms],
            "avg_corr_63d": 0.3,
        }
    )
    quality = pd.DataFrame({"symbol": syms, "data_quality_score": 0.95, "status": "VALID"})
    cands = pd.DataFrame(
        {
            "candidate_id": [f"momentum:{s}" for s in syms],
            "strategy_id": "momentum",
            "symbol": syms,
            "confidence": [spec[s][4] for s in syms],
            "cvar_95": 0.06,
            "liquidity_score": [spec[s][3] for s in syms],
            "data_quality_score": 0.95,
        }
    )
    fc = pd.DataFrame({"symbol": syms, "mu_adj": 0.004, "sigma": 0.03, "cvar_95": 0.06,
                       "confidence": [spec[s][4] for s in syms]})
    con = duckdb.connect(str(db))
    try:
        replace_partition(con, "market_features", feats, "as_of", day)
        replace_partition(con, "data_quality", quality, "as_of", day)
        replace_partition(con, "strategy_candidates", cands, "as_of", day)
        replace_partition(con, "forecasts", fc, "as_of", day)
        if with_proposals:
            replace_partition(con, "order_proposals", proposals_frame(spec), "as_of", day)
    finally:
        con.close()


def query(db: Path, sql: str, params: list[Any] | None = None) -> pd.DataFrame:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, params or []).df()
    finally:
        con.close()


@dataclass
class Rig:
    root: Path
    db: Path
    policies_dir: Path
    resources: dict[str, Any]
    instance: dg.DagsterInstance

    @property
    def ledger(self) -> LedgerResource:
        return self.resources["ledger"]

    def store(self):  # noqa: ANN201 - LedgerStore
        return self.ledger.store()

    def run(self, partition: str = D, raise_on_error: bool = True, **overrides: Any) -> dg.ExecuteInProcessResult:
        return dg.materialize(
            [*EXECUTION_ASSETS, *EXECUTION_CHECKS],
            partition_key=partition,
            resources={**self.resources, **overrides},
            instance=self.instance,
            raise_on_error=raise_on_error,
        )


def make_rig(tmp_path: Path, policies_dir: Path, **broker_cfg: Any) -> Rig:
    root = tmp_path / "runtime"
    root.mkdir(exist_ok=True)
    db = root / "warehouse.duckdb"
    resources: dict[str, Any] = {
        "policies": PoliciesResource(directory=str(policies_dir)),
        "warehouse": DuckDBResource(database=str(db)),
        "ledger": LedgerResource(url=f"sqlite:///{root / 'ledger.sqlite'}", runtime_root=str(root)),
        "signing_key": SigningKeyResource(),
        "execution_clock": ExecutionClockResource(mode="simulated"),
        "broker": BrokerResource(kind="paper", **broker_cfg),
    }
    return Rig(root, db, policies_dir, resources, dg.DagsterInstance.ephemeral())


@pytest.fixture()
def signing_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIS_APPROVAL_KEY", KEY_HEX)
    monkeypatch.delenv("AIS_APPROVAL_KEY_FILE", raising=False)
    monkeypatch.setenv("AIS_ENV", "ci")


@pytest.fixture()
def rig(tmp_path: Path, policies_dir: Path, signing_env: None) -> Rig:
    r = make_rig(tmp_path, policies_dir)
    write_nightly(r.db)
    return r


def decisions_of(db: Path, as_of: str = D) -> pd.DataFrame:
    return query(db, "SELECT * FROM governance_decisions WHERE as_of = ? ORDER BY order_id", [pd.Timestamp(as_of).date()])


# --------------------------------------------------------------------------------------------
# the full intraday job


def test_full_intraday_job_approves_fills_queues_and_rejects(rig: Rig) -> None:
    result = rig.run()
    assert result.success
    d = decisions_of(rig.db).set_index("symbol")
    assert d.loc["AAPL", "decision"] == "APPROVE" and d.loc["AAPL", "reason_codes"] == "APPROVED"
    assert d.loc["AAPL", "approved_qty"] == 100.0
    assert pd.Timestamp(d.loc["AAPL", "expires_at"]) == pd.Timestamp(EXEC_NOW) + pd.Timedelta(seconds=300)
    assert d.loc["MSFT", "decision"] == "REVIEW" and d.loc["MSFT", "reason_codes"] == "LOW_CONFIDENCE"
    assert d.loc["MSFT", "approved_qty"] == 0.0
    assert d.loc["JPM", "decision"] == "REJECT" and d.loc["JPM", "reason_codes"] == "LOW_LIQUIDITY"
    assert d.loc["PLD", "decision"] == "REJECT" and d.loc["PLD", "reason_codes"] == "MISSING_IMPACT_ESTIMATE"
    env_digest = ex.load_environment_policy("ci", rig.policies_dir).digest
    assert set(d["policy_digest"]) == {env_digest}

    hits = query(rig.db, "SELECT * FROM governance_rule_hits WHERE as_of = ?", [pd.Timestamp(D).date()])
    jpm = hits[hits["symbol"] == "JPM"]
    assert list(jpm["rule_id"]) == ["low_liquidity"]
    assert json.loads(jpm["observed"].iloc[0]) == {"liquidity_score": 0.5, "reduces_position": False}
    msft = hits[hits["symbol"] == "MSFT"]
    assert list(msft["rule_id"]) == ["low_confidence"] and list(msft["action"]) == ["REVIEW"]
    assert hits[hits["symbol"] == "AAPL"].empty

    orders = query(rig.db, "SELECT * FROM execution_orders WHERE as_of = ?", [pd.Timestamp(D).date()])
    assert list(orders["symbol"]) == ["AAPL"]  # REVIEW and REJECT never reach the OMS
    assert orders["state"].iloc[0] == "FILLED" and orders["filled_qty"].iloc[0] == 100.0
    fills = query(rig.db, "SELECT * FROM execution_fills WHERE as_of = ?", [pd.Timestamp(D).date()])
    assert fills["qty"].sum() == 100.0
    # the fill is priced on the simulated session's walk, not at the decision close: the
    # too-perfect-execution veto cannot fire by construction
    assert (fills["price"] != 180.0).all()
    assert (fills["slippage_bps"] - fills["predicted_impact_bps"]).abs().min() > 0.5

    store = rig.store()
    ledger_orders = store.list_orders()
    assert [o.symbol for o in ledger_orders] == ["AAPL"] and ledger_orders[0].state is OrderState.FILLED
    review = store.list_reviews("PENDING")
    assert [r.item_id for r in review] == ["review:2024-03-04:MSFT:BUY"]
    assert set(review[0].reasons) == {"LOW_CONFIDENCE", "SENT_TO_REVIEW"}
    assert store.positions()["AAPL"].qty == 100.0

    evals = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert {k: c.passed for k, c in evals.items()} == {"orders_have_valid_approvals": True,
                                                       "nothing_in_review_executed": True,
                                                       "audit_chain_verifies": True}
    assert evals["orders_have_valid_approvals"].metadata["orders_checked"].value == 1  # not vacuous
    assert evals["nothing_in_review_executed"].metadata["blocked_orders"].value == 3
    assert ledger_orders[0].payload["as_of"] == D and ledger_orders[0].payload["order_id"] == "2024-03-04:AAPL:BUY"
    audit = list(SqlAuditStore(store.engine).iter_records())
    assert verify_store(SqlAuditStore(store.engine)).ok
    kinds = [r.event_type for r in audit]
    assert kinds.count("governance.decision") == 4
    assert {"policy.loaded", "order.intent", "order.update", "execution.completed"} <= set(kinds)
    decision_records = {r.subject: r for r in audit if r.event_type == "governance.decision"}
    assert decision_records["order:2024-03-04:JPM:BUY"].reason_codes == ("LOW_LIQUIDITY",)
    assert decision_records["order:2024-03-04:JPM:BUY"].payload["rules_hit"] == ["low_liquidity"]
    assert decision_records["order:2024-03-04:MSFT:BUY"].reason_codes == ("LOW_CONFIDENCE", "SENT_TO_REVIEW")

    pnl = query(rig.db, "SELECT * FROM pnl_history")
    assert list(pnl["as_of"].astype(str)) == [D]
    assert pnl["trading_mode"].iloc[0] == "ACTIVE" and not pnl["kill_switch"].iloc[0]
    assert abs(pnl["nav"].iloc[0] - 1_000_000.0) < 2_000  # one 18k position moved by the walk
    pos = query(rig.db, "SELECT * FROM positions_snapshot")
    assert list(pos["symbol"]) == ["AAPL"] and pos["qty"].iloc[0] == 100.0

    mat = {e.asset_key.to_user_string(): e.materialization.metadata for e in result.get_asset_materialization_events()}
    assert mat["approved_orders"]["approved"].value == 1
    assert mat["approved_orders"]["review"].value == 1
    assert mat["approved_orders"]["rejected"].value == 2
    assert mat["portfolio_state"]["trading_mode"].value == "ACTIVE"
    orders_table = mat["executed_orders"]["orders_table"]  # a typed table (issue 14)
    assert "symbol" in [c.name for c in orders_table.schema.columns]
    assert "AAPL" in {r.data["symbol"] for r in orders_table.records}


def test_approval_check_fails_on_a_tampered_order(rig: Rig) -> None:
    assert rig.run().success
    store = rig.store()
    (order,) = store.list_orders()
    with store.engine.begin() as conn:  # someone edits the executed quantity in the ledger
        conn.execute(update(m.orders).values(payload={**order.payload, "qty": 1000.0}))
    table = ex.verify_executed_approvals(store, bytes.fromhex(KEY_HEX), D)
    assert list(table["ok"]) == [False] and "SIGNATURE_INVALID" in table["problem"].iloc[0]


def test_rerun_of_the_same_partition_never_duplicates_an_order(rig: Rig) -> None:
    rig.run()
    first = [(o.client_order_id, o.filled_qty) for o in rig.store().list_orders()]
    assert rig.run().success
    assert [(o.client_order_id, o.filled_qty) for o in rig.store().list_orders()] == first
    paper = rig.store().engine
    with paper.begin() as conn:
        n = conn.execute(m.paper_orders.select()).all()
    assert len(n) == 1


def test_stale_quote_rejects_with_stale_quote(tmp_path: Path, policies_dir: Path, signing_env: None) -> None:
    r = make_rig(tmp_path, policies_dir, quote_lag_s=45.0)
    write_nightly(r.db)
    assert r.run().success
    d = decisions_of(r.db).set_index("symbol")
    assert d.loc["AAPL", "decision"] == "REJECT" and d.loc["AAPL", "reason_codes"] == "STALE_QUOTE"
    assert "STALE_QUOTE" in d.loc["MSFT", "reason_codes"]  # REJECT outranks its REVIEW hit
    hits = query(r.db, "SELECT * FROM governance_rule_hits WHERE symbol = 'AAPL'")
    assert list(hits["rule_id"]) == ["stale_quote"]
    assert json.loads(hits["observed"].iloc[0]) == {"quote_age_s": 45.0}
    assert r.store().list_orders() == []


def test_quote_within_30s_is_fresh(tmp_path: Path, policies_dir: Path, signing_env: None) -> None:
    r = make_rig(tmp_path, policies_dir, quote_lag_s=29.0)
    write_nightly(r.db)
    assert r.run().success
    assert decisions_of(r.db).set_index("symbol").loc["AAPL", "decision"] == "APPROVE"


def test_missing_signing_key_fails_closed_before_any_broker_call(
    tmp_path: Path, policies_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AIS_APPROVAL_KEY", raising=False)
    monkeypatch.delenv("AIS_APPROVAL_KEY_FILE", raising=False)
    r = make_rig(tmp_path, policies_dir)
    write_nightly(r.db)
    result = r.run(raise_on_error=False)
    assert not result.success
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert [e.step_key for e in failures] == ["execution_context"]
    assert "SIGNING_KEY_MISSING" in str(failures[0].event_specific_data.error)
    with r.store().engine.begin() as conn:
        assert conn.execute(m.paper_orders.select()).all() == []
        assert conn.execute(m.paper_account.select()).all() == []  # the broker was never even built
    assert r.store().list_orders() == []


def test_daily_loss_trips_the_kill_switch_and_it_latches(rig: Rig) -> None:
    # The previous session closed at 1.1M: today's NAV (~1.0M) is a 9 % loss ≥ the 3 % limit.
    con = duckdb.connect(str(rig.db))
    try:
        prev = pd.DataFrame([{"nav": 1_100_000.0, "pnl_day": 0.0, "expected_pnl": 0.0, "expected_pnl_sd": 0.0}])
        replace_partition(con, "pnl_history", prev, "as_of", pd.Timestamp("2024-03-01").date())
    finally:
        con.close()
    assert rig.run().success
    d = decisions_of(rig.db).set_index("symbol")
    # the pre-trade drawdown rule already refused every new risk …
    assert d.loc["AAPL", "decision"] == "REJECT" and "DAILY_DRAWDOWN_LIMIT" in d.loc["AAPL", "reason_codes"]
    # … and the valuation tripped the kill switch
    store = rig.store()
    status = store.current_trading_status()
    assert status.mode is TradingMode.HALTED
    assert status.reason_codes == (ReasonCode.KILL_SWITCH_DAILY_LOSS,)
    pnl = query(rig.db, "SELECT * FROM pnl_history WHERE as_of = ?", [pd.Timestamp(D).date()])
    assert bool(pnl["kill_switch"].iloc[0]) and pnl["daily_loss"].iloc[0] >= 0.03
    # latched: a loss back under the limit does not relax it, and resume needs a person and a reason
    assert check_daily_loss(status, daily_loss=0.0, limit=0.03, now=EXEC_NOW) == status
    _as_of, clock = control_clock(rig.resources["policies"].load(), store, rig.resources["execution_clock"])
    with pytest.raises(control.ControlError):
        control.change_trading_state(store, rig.ledger.audit(), "resume", actor="jane", why=" ", now=clock.now())
    with pytest.raises(TradingStateError):  # no automatic process may lift the latch
        store.change_trading_status(lambda s: resume(s, actor="system", why="auto", now=clock.now()))
    assert store.current_trading_status().mode is TradingMode.HALTED
    resumed = control.change_trading_state(store, rig.ledger.audit(), "resume", actor="jane.doe",
                                           why="loss explained by fixture NAV", now=clock.now())
    assert resumed.mode is TradingMode.ACTIVE and resumed.actor == "jane.doe"
    last = list(SqlAuditStore(store.engine).iter_records())[-1]
    assert (last.event_type, last.actor, last.payload["why"]) == ("trading.resume", "jane.doe",
                                                                  "loss explained by fixture NAV")


def test_halted_book_refuses_in_the_oms_and_records_the_refusal(rig: Rig) -> None:
    store = rig.store()
    control.change_trading_state(store, rig.ledger.audit(), "kill_switch", actor="risk.officer",
                                 why="desk incident", now=EXEC_NOW)
    assert rig.run().success  # a manual launch still decides and records, but nothing is sent
    orders = query(rig.db, "SELECT * FROM execution_orders")
    assert list(orders["state"]) == ["REFUSED"] and orders["reason_codes"].iloc[0] == "TRADING_HALTED"
    with store.engine.begin() as conn:
        assert conn.execute(m.paper_orders.select()).all() == []


def test_deleverage_admits_only_reducing_orders(rig: Rig) -> None:
    """REDUCING (forced deleverage): the OMS admits only orders that shrink a position."""
    control.change_trading_state(rig.store(), rig.ledger.audit(), "deleverage", actor="risk.officer",
                                 why="crisis probability high", now=EXEC_NOW)
    assert rig.run().success
    orders = query(rig.db, "SELECT * FROM execution_orders")
    assert list(orders["state"]) == ["REFUSED"] and orders["reason_codes"].iloc[0] == "REDUCE_ONLY"


def test_reconciliation_mismatch_pauses_trading(rig: Rig) -> None:
    assert rig.run().success
    recon = [exec_assets.broker_reconciliation]
    ok = dg.materialize(recon, resources=rig.resources, instance=rig.instance)
    assert ok.get_asset_check_evaluations()[0].passed
    assert rig.store().current_trading_status().mode is TradingMode.ACTIVE
    # the broker's own fills disagree with the ledger (a fill the ledger never recorded)
    store = rig.store()
    sess = open_reconciliation_session(
        rig.resources["policies"].load(), rig.ledger, rig.resources["execution_clock"], rig.resources["broker"]
    )
    with store.engine.begin() as conn:  # the broker now reports 10 more AAPL than the ledger booked
        conn.execute(update(m.paper_fills).values(qty=110.0))
    assert sess.broker.get_positions()["AAPL"].qty == 110.0
    res = dg.materialize(recon, resources=rig.resources, instance=rig.instance)
    check = res.get_asset_check_evaluations()[0]
    assert not check.passed
    status = store.current_trading_status()
    assert status.mode is TradingMode.PAUSED and status.reason_codes == (ReasonCode.RECONCILIATION_MISMATCH,)
    table = query(rig.db, "SELECT * FROM reconciliation_mismatches")
    assert list(table["kind"]) == ["POSITION_QTY_MISMATCH"]
    pos = table.iloc[0]
    assert (pos["symbol"], pos["ledger_value"], pos["broker_value"], pos["difference"]) == ("AAPL", "100.0",
                                                                                           "110.0", 10.0)
    assert [e.kind for e in store.execution_events()][-1] == "RECONCILIATION_MISMATCH"
    kinds = [r.event_type for r in SqlAuditStore(store.engine).iter_records()]
    assert kinds[-1] == "reconciliation.mismatch"
    meta = res.get_asset_materialization_events()[0].materialization.metadata
    assert meta["mismatch_count"].value == 1 and meta["trading_mode"].value == "PAUSED"


def test_audit_write_failure_halts(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    from ais_pipelines.oms.oms import SystemHaltedError

    def broken(*_a: Any, **_k: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(SqlAuditStore, "append", broken)
    monkeypatch.setattr(SqlAuditStore, "append_next", broken)  # the chain's locked read + append
    result = rig.run(raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert failure.step_key == "approved_orders"
    assert SystemHaltedError.__name__ in str(failure.event_specific_data.error)
    status = rig.store().current_trading_status()
    assert status.mode is TradingMode.HALTED and ReasonCode.AUDIT_WRITE_FAILED in status.reason_codes


# --------------------------------------------------------------------------------------------
# policy environments


def test_environment_overlays(policies_dir: Path) -> None:
    local = ex.load_environment_policy("local", policies_dir)
    prod = ex.load_environment_policy("prod", policies_dir)
    assert local.policy.rule("veto_data_dependency").params == {"min_providers": 1, "min_quality": 0.8}
    assert prod.policy.rule("veto_data_dependency").params == {"min_providers": 2, "min_quality": 0.8}
    assert prod.overrides == () and prod.policy.digest == prod.shipped_digest
    assert local.policy.digest != local.shipped_digest and local.digest != prod.digest
    (o,) = local.overrides
    assert (o.rule_id, o.param, o.shipped, o.value) == ("veto_data_dependency", "min_providers", 2, 1)
    assert "one synthetic source by construction" in o.why
    assert local.audit_payload()["overrides"][0]["why"] == o.why


def test_prod_policy_vetoes_a_single_provider(tmp_path: Path, policies_dir: Path, signing_env: None,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIS_ENV", "prod")
    r = make_rig(tmp_path, policies_dir)
    write_nightly(r.db)
    assert r.run().success
    d = decisions_of(r.db).set_index("symbol")
    assert d.loc["AAPL", "decision"] == "REJECT" and d.loc["AAPL", "reason_codes"] == "VETO_DATA_DEPENDENCY"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("param_overrides: {no_such_rule: {why: x, a: 1}}", "unknown rule id 'no_such_rule'"),
        ("param_overrides: {veto_data_dependency: {why: x, min_provider: 1}}", "unknown param 'min_provider'"),
        ("param_overrides: {veto_data_dependency: {min_providers: 1}}", "every override needs a written reason"),
        ("param_overrides: {veto_data_dependency: {why: x, min_providers: lots}}", "min_providers"),
        ("environment: prod\nparam_overrides: {}", "file declares 'prod'"),
        ("param_overrides: [1, 2", "malformed YAML"),
        ("surprise: 1", "unknown key(s) ['surprise']"),
    ],
)
def test_environment_overlay_errors_name_the_file(policies_dir: Path, body: str, message: str) -> None:
    path = policies_dir / "environments" / "ci.yaml"
    path.write_text(body)
    with pytest.raises(PolicyError) as err:
        ex.load_environment_policy("ci", policies_dir)
    assert str(err.value).startswith(str(path)) and message in str(err.value)
    assert err.value.path == str(path)


def test_missing_environment_overlay_fails_closed(policies_dir: Path) -> None:
    (policies_dir / "environments" / "ci.yaml").unlink()
    with pytest.raises(PolicyError, match="ci.yaml: cannot read environment overlay"):
        ex.load_environment_policy("ci", policies_dir)


def test_unknown_environment_is_refused() -> None:
    with pytest.raises(PolicyError, match="AIS_ENV must be one of"):
        ex.environment_name({"AIS_ENV": "staging"})
    assert ex.environment_name({}) == "local"


# --------------------------------------------------------------------------------------------
# broker modes and edge cases


def test_shadow_mode_decides_and_records_but_never_submits(tmp_path: Path, policies_dir: Path,
                                                          signing_env: None) -> None:
    r = make_rig(tmp_path, policies_dir)
    write_nightly(r.db)
    assert r.run(broker=BrokerResource(kind="shadow")).success
    (order,) = r.store().list_orders()
    assert (order.symbol, order.mode, order.state) == ("AAPL", "SHADOW", OrderState.CANCELLED)
    assert "SHADOW_MODE" in order.reason_codes
    with r.store().engine.begin() as conn:
        assert conn.execute(m.paper_orders.select()).all() == []  # the paper broker never saw it
    assert r.store().positions() == {}


def test_live_broker_is_refused(tmp_path: Path, policies_dir: Path, signing_env: None) -> None:
    r = make_rig(tmp_path, policies_dir)
    write_nightly(r.db)
    result = r.run(broker=BrokerResource(kind="live"), raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "LIVE_TRADING_REFUSED" in str(failure.event_specific_data.error)
    assert r.store().list_orders() == []


def test_alpaca_without_credentials_fails_closed(tmp_path: Path, policies_dir: Path, signing_env: None,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APCA_API_KEY_ID", raising=False)
    monkeypatch.delenv("APCA_API_SECRET_KEY", raising=False)
    r = make_rig(tmp_path, policies_dir)
    write_nightly(r.db)
    result = r.run(broker=BrokerResource(kind="alpaca_paper"), raise_on_error=False)
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert failure.step_key == "execution_context"
    assert "PROVIDER_NOT_ENTITLED" in str(failure.event_specific_data.error)


def test_no_proposals_runs_clean_and_records_nothing(tmp_path: Path, policies_dir: Path, signing_env: None) -> None:
    r = make_rig(tmp_path, policies_dir)
    write_nightly(r.db, with_proposals=False)
    result = r.run()
    assert result.success
    mat = {e.asset_key.to_user_string(): e.materialization.metadata for e in result.get_asset_materialization_events()}
    assert mat["approved_orders"]["approved"].value == 0 and mat["executed_orders"]["orders"].value == 0
    assert r.store().list_orders() == []
    assert mat["portfolio_state"]["nav"].value == 1_000_000.0


def test_policy_context_maps_every_field(rig: Rig) -> None:
    """Every CONTEXT_FIELD is supplied, with the documented sources and 0 (not null) history counts."""
    assert rig.run().success
    ctx = query(rig.db, "SELECT * FROM execution_context WHERE as_of = ? ORDER BY symbol", [pd.Timestamp(D).date()])
    from ais_pipelines.core.policy import CONTEXT_FIELDS

    assert set(CONTEXT_FIELDS) <= set(ctx.columns)
    a = ctx.set_index("symbol").loc["AAPL"]
    assert bool(a["market_open"]) and bool(a["symbol_allowed"]) and not bool(a["event_blackout"])
    assert a["quote_age_s"] == 0.0 and a["daily_drawdown"] == 0.0
    assert a["liquidity_score"] == 0.92 and a["confidence"] == 0.80 and a["data_quality_score"] == 0.95
    assert a["gross_exposure_limit"] == 1.0
    assert a["risk_per_trade_nav"] == pytest.approx(0.06 * 100 * a["mid"] / 1_000_000.0)
    assert a["correlation_to_book"] == 0.0  # empty book
    assert (a["exec_fill_count"], a["pnl_obs_days"], a["win_count"]) == (0.0, 0.0, 0.0)
    assert a["data_provider_count"] == 1.0  # the sample quote source; no bars table in the fixture
    assert a["reasoning"] == "NONE" and not bool(a["reduces_position"])
    # gross exposure accumulates earlier risk-increasing orders of the batch
    by_order = ctx.set_index("order_id")
    assert by_order.loc["2024-03-04:MSFT:BUY", "gross_exposure_after"] > by_order.loc[
        "2024-03-04:AAPL:BUY", "gross_exposure_after"]


def test_definitions_wiring_loads(tmp_path: Path, policies_dir: Path) -> None:
    """The execution modules, jobs, sensors and per-environment resources load as one code location."""
    from ais_pipelines.config import Policies
    from assets import control as control_assets
    from resources.trading import trading_resources_for
    from sensors.execution import execution_sensor, reconciliation_sensor

    pol = Policies(policies_dir)
    mods = [exec_assets, control_assets]
    for env in ("local", "ci", "prod"):
        res = trading_resources_for(env, str(tmp_path))
        defs = dg.Definitions(
            assets=dg.load_assets_from_modules(mods),
            asset_checks=dg.load_asset_checks_from_modules(mods),
            jobs=[exec_assets.intraday_execution_job, exec_assets.reconciliation_job,
                  control_assets.review_decision_job, control_assets.trading_control_job],
            sensors=[execution_sensor(exec_assets.intraday_execution_job, pol),
                     reconciliation_sensor(exec_assets.reconciliation_job, pol)],
            resources={"policies": PoliciesResource(directory=str(policies_dir)),
                       "warehouse": DuckDBResource(database=str(tmp_path / "w.duckdb")), **res},
        )
        dg.Definitions.validate_loadable(defs)
        assert {"ledger", "signing_key", "execution_clock", "broker"} <= set(res)
        assert res["execution_clock"].mode == ("system" if env == "prod" else "simulated")
    job = defs.resolve_job_def("intraday_execution_job")
    assert {n.name for n in job.nodes_in_topological_order} >= {
        "execution_context", "approved_orders", "executed_orders", "portfolio_state"}
    graph = defs.resolve_asset_graph()
    assert graph.get(dg.AssetKey("execution_context")).parent_keys >= {dg.AssetKey("order_proposals")}
    assert not (tmp_path / "ledger.sqlite").exists()  # nothing opened at load time
    with pytest.raises(ValueError, match="AIS_ENV"):
        trading_resources_for("staging", str(tmp_path))
