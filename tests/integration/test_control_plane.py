"""§H5, §J2, §J3: the human control plane — Dagster jobs with run config and the ``ais`` commands.

Every override is a named person with a reason, audited; REVIEW items execute only through a
person's APPROVE, which still passes every hard rule and the OMS.
"""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import typer
from sqlalchemy import update
from typer.testing import CliRunner

from ais_pipelines import cli_ops
from ais_pipelines.core.order_states import OrderState
from ais_pipelines.core.trading_state import TradingMode
from ais_pipelines.ledger import models as m
from ais_pipelines.ledger.store import SqlAuditStore
from assets import control as control_jobs
from assets import execution as exec_assets
from resources.trading import ExecutionClockResource
from tests.integration.test_execution import (
    EXECUTION_ASSETS,
    EXECUTION_CHECKS,
    KEY_HEX,
    Rig,
    make_rig,
    query,
    write_nightly,
)
from tests.integration.test_execution_sensor import stand_ins

D = "2024-03-04"
MSFT_ITEM = "review:2024-03-04:MSFT:BUY"
CONTROL_RESOURCES = ("policies", "warehouse", "ledger", "signing_key", "execution_clock", "broker")


@pytest.fixture()
def rig(tmp_path: Path, policies_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Rig:
    monkeypatch.setenv("AIS_APPROVAL_KEY", KEY_HEX)
    monkeypatch.delenv("AIS_APPROVAL_KEY_FILE", raising=False)
    monkeypatch.setenv("AIS_ENV", "ci")
    r = make_rig(tmp_path, policies_dir)
    write_nightly(r.db)
    assert r.run().success  # AAPL filled, MSFT queued for review, JPM/PLD rejected
    return r


def review(rig: Rig, item_id: str, decision: str, actor: str = "jane.doe", why: str = "checked with the desk",
           **overrides: Any) -> dg.ExecuteInProcessResult:
    resources = {k: rig.resources[k] for k in CONTROL_RESOURCES} | overrides
    return control_jobs.review_decision_job.execute_in_process(
        run_config={"item_id": item_id, "decision": decision, "actor": actor, "why": why},
        resources=resources,
        instance=rig.instance,
        raise_on_error=False,
    )


def control(rig: Rig, action: str, actor: str = "risk.officer", why: str = "drill",
            **extra: Any) -> dg.ExecuteInProcessResult:
    resources = {k: rig.resources[k] for k in ("policies", "ledger", "execution_clock")}
    return control_jobs.trading_control_job.execute_in_process(
        run_config={"action": action, "actor": actor, "why": why, **extra},
        resources=resources,
        instance=rig.instance,
        raise_on_error=False,
    )


def failure_text(result: dg.ExecuteInProcessResult) -> str:
    ev = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    return str(ev.event_specific_data.error)


def audit(rig: Rig) -> list[Any]:
    return list(SqlAuditStore(rig.store().engine).iter_records())


# --------------------------------------------------------------------------------------------
# review_decision_job


def test_review_approve_signs_and_executes_through_the_oms(rig: Rig) -> None:
    result = review(rig, MSFT_ITEM, "APPROVE")
    assert result.success
    out = result.output_for_node("review_decision")
    assert (out["status"], out["symbol"], out["state"], out["filled_qty"]) == ("APPROVED", "MSFT", "FILLED", 50.0)
    store = rig.store()
    item = store.get_review(MSFT_ITEM)
    assert (item.status, item.decided_by, item.why) == ("APPROVED", "jane.doe", "checked with the desk")
    order = store.get_order(out["client_order_id"])
    assert order.state is OrderState.FILLED
    assert order.payload["review_item_id"] == MSFT_ITEM and order.payload["approved_by"] == "jane.doe"
    records = audit(rig)
    approved = next(r for r in records if r.event_type == "review.approved")
    assert (approved.actor, approved.payload["why"], approved.reason_codes) == (
        "jane.doe", "checked with the desk", ("HUMAN_APPROVED",))
    assert [r.event_type for r in records].index("review.approved") < [r.event_type for r in records].index(
        "approval.issued") < max(i for i, r in enumerate(records) if r.event_type == "order.intent")
    # the governance checks of D still hold: a person approved it, the signature is valid
    checks = dg.materialize(
        [*EXECUTION_ASSETS, *EXECUTION_CHECKS],
        selection=dg.AssetSelection.assets(exec_assets.executed_orders),  # re-run is idempotent
        partition_key=D, resources=rig.resources, instance=rig.instance,
    )
    assert {c.check_name: c.passed for c in checks.get_asset_check_evaluations()} == {
        "orders_have_valid_approvals": True, "nothing_in_review_executed": True, "audit_chain_verifies": True}


def test_review_check_catches_an_order_sent_without_a_human_decision(rig: Rig) -> None:
    """If a REVIEW order ever reached the ledger without an approved review item, the check fails."""
    from ais_pipelines import execution as ex
    from ais_pipelines.oms.oms import OrderManagementSystem
    from resources.trading import open_trading_session

    item = rig.store().get_review(MSFT_ITEM)
    with rig.resources["warehouse"].get_connection() as con:
        s = open_trading_session(rig.resources["policies"].load(), con, D, rig.ledger, rig.resources["execution_clock"],
                                 rig.resources["broker"], not_before=ex.latest_activity(rig.store()))
    key = bytes.fromhex(KEY_HEX)
    rogue = ex.sign_order(item.order_payload, s.clock.now() + timedelta(minutes=5), key)
    OrderManagementSystem(s.ledger, s.broker, key, s.clock, s.audit).submit(rogue.approval, rogue.payload)
    checks = dg.materialize(
        [*EXECUTION_ASSETS, *EXECUTION_CHECKS],
        selection=dg.AssetSelection.assets(exec_assets.executed_orders),  # re-run is idempotent
        partition_key=D, resources=rig.resources, instance=rig.instance, raise_on_error=False,
    )
    result = {c.check_name: c for c in checks.get_asset_check_evaluations()}
    assert not result["nothing_in_review_executed"].passed
    assert result["nothing_in_review_executed"].metadata["executed_without_approval"].value == 1
    assert result["orders_have_valid_approvals"].passed  # validly signed — but never by a person


def test_review_reject_records_and_sends_nothing(rig: Rig) -> None:
    result = review(rig, MSFT_ITEM, "REJECT", why="too correlated with tech book")
    assert result.success
    item = rig.store().get_review(MSFT_ITEM)
    assert (item.status, item.why) == ("REJECTED", "too correlated with tech book")
    assert [o.symbol for o in rig.store().list_orders()] == ["AAPL"]
    last = audit(rig)[-1]
    assert (last.event_type, last.actor, last.reason_codes) == ("review.rejected", "jane.doe", ("HUMAN_REJECTED",))


def test_review_decisions_are_single_use_and_need_a_reason(rig: Rig) -> None:
    no_reason = review(rig, MSFT_ITEM, "REJECT", why="  ")
    assert not no_reason.success and "needs an actor (who) and a reason (why)" in failure_text(no_reason)
    with pytest.raises(dg.DagsterInvalidConfigError, match="MAYBE"):  # a choice, refused before any step runs
        review(rig, MSFT_ITEM, "MAYBE")
    assert review(rig, MSFT_ITEM, "REJECT").success
    again = review(rig, MSFT_ITEM, "APPROVE")
    assert not again.success and "already REJECTED" in failure_text(again)
    missing = review(rig, "review:nope", "APPROVE")
    assert not missing.success and "REVIEW_ITEM_NOT_FOUND: review item review:nope does not exist" in failure_text(
        missing)
    assert "HUMAN_REJECTED" not in failure_text(missing)


def test_review_approve_still_obeys_hard_rules(rig: Rig) -> None:
    saturday = ExecutionClockResource(mode="fixed", fixed_now=datetime(2024, 3, 9, 15, 0, tzinfo=UTC).isoformat())
    closed = review(rig, MSFT_ITEM, "APPROVE", execution_clock=saturday)
    assert not closed.success and "MARKET_CLOSED" in failure_text(closed)
    assert rig.store().get_review(MSFT_ITEM).status == "PENDING"  # retry once the market opens
    assert audit(rig)[-1].event_type == "review.approve_blocked"
    assert review(rig, MSFT_ITEM, "APPROVE").success


def test_review_approve_refused_while_halted(rig: Rig) -> None:
    assert control(rig, "kill_switch", why="desk incident").success
    result = review(rig, MSFT_ITEM, "APPROVE")
    assert not result.success and "TRADING_HALTED" in failure_text(result)
    assert rig.store().get_review(MSFT_ITEM).status == "PENDING"


def test_review_approve_without_signing_key_fails_closed(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIS_APPROVAL_KEY")
    result = review(rig, MSFT_ITEM, "APPROVE")
    assert not result.success and "SIGNING_KEY_MISSING" in failure_text(result)
    assert rig.store().get_review(MSFT_ITEM).status == "PENDING"


# --------------------------------------------------------------------------------------------
# trading_control_job


def test_trading_controls_are_audited_with_who_and_why(rig: Rig) -> None:
    assert control(rig, "pause", why="broker maintenance").success
    assert rig.store().current_trading_status().mode is TradingMode.PAUSED
    assert control(rig, "kill_switch", why="desk incident").success
    status = rig.store().current_trading_status()
    assert (status.mode, status.actor, status.why) == (TradingMode.HALTED, "risk.officer", "desk incident")
    assert not control(rig, "resume", why=" ").success  # resume needs actor + why
    refused = control(rig, "resume", actor="system", why="auto")
    assert not refused.success and "must be done by a person" in failure_text(refused)
    assert rig.store().current_trading_status().mode is TradingMode.HALTED
    ok = control(rig, "resume", actor="cro", why="incident closed", to="REDUCING")
    assert ok.success and ok.output_for_node("trading_control")["mode"] == "REDUCING"
    assert control(rig, "deleverage", why="crisis").success
    with pytest.raises(dg.DagsterInvalidConfigError, match="launch_missiles"):  # a choice in the launchpad
        control(rig, "launch_missiles")
    events = [(r.event_type, r.actor, r.payload.get("why")) for r in audit(rig) if r.event_type.startswith("trading.")]
    assert events == [
        ("trading.pause", "risk.officer", "broker maintenance"),
        ("trading.kill_switch", "risk.officer", "desk incident"),
        ("trading.resume", "cro", "incident closed"),
        ("trading.deleverage", "risk.officer", "crisis"),
    ]


# --------------------------------------------------------------------------------------------
# the ais commands


@pytest.fixture()
def cli(rig: Rig, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[CliRunner, typer.Typer]:
    monkeypatch.setenv("AIS_RUNTIME_DIR", str(rig.root))
    monkeypatch.setenv("AIS_WAREHOUSE", str(rig.db))
    monkeypatch.setenv("AIS_POLICIES_DIR", str(rig.policies_dir))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.delenv("AIS_LEDGER_URL", raising=False)
    app = typer.Typer()
    cli_ops.register(app)
    return CliRunner(), app


def test_cli_review_list_approve_reject(cli: tuple[CliRunner, typer.Typer], rig: Rig) -> None:
    runner, app = cli
    listed = runner.invoke(app, ["review", "list"])
    assert listed.exit_code == 0 and MSFT_ITEM in listed.output and "LOW_CONFIDENCE" in listed.output
    missing_why = runner.invoke(app, ["review", "approve", MSFT_ITEM, "--actor", "jane.doe"])
    assert missing_why.exit_code != 0
    ok = runner.invoke(app, ["review", "approve", MSFT_ITEM, "--actor", "jane.doe", "--why", "thesis re-checked"])
    assert ok.exit_code == 0, ok.output
    assert "APPROVED review:2024-03-04:MSFT:BUY by jane.doe: BUY 50 MSFT → FILLED" in ok.output
    again = runner.invoke(app, ["review", "reject", MSFT_ITEM, "--actor", "jane.doe", "--why", "changed my mind"])
    assert again.exit_code == 1 and "already APPROVED" in again.output
    assert "no PENDING review items" in runner.invoke(app, ["review", "list"]).output
    assert "APPROVED" in runner.invoke(app, ["review", "list", "--status", "all"]).output


def test_cli_trading_state(cli: tuple[CliRunner, typer.Typer], rig: Rig) -> None:
    runner, app = cli
    assert runner.invoke(app, ["trading", "status"]).output.startswith("ACTIVE")
    kill = runner.invoke(app, ["trading", "kill", "--actor", "cro", "--why", "fat finger"])
    assert kill.exit_code == 0 and kill.output.startswith("HALTED") and "KILL_SWITCH_MANUAL" in kill.output
    status = runner.invoke(app, ["trading", "status"])
    assert "HALTED" in status.output and "by cro: fat finger" in status.output and "1 pending" in status.output
    assert runner.invoke(app, ["trading", "resume", "--actor", "cro"]).exit_code != 0  # --why is mandatory
    blank = runner.invoke(app, ["trading", "resume", "--actor", "cro", "--why", ""])
    assert blank.exit_code == 1 and blank.output.startswith("OVERRIDE_UNJUSTIFIED: ")
    assert runner.invoke(app, ["trading", "resume", "--actor", "cro", "--why", "cleared"]).output.startswith("ACTIVE")
    assert runner.invoke(app, ["trading", "pause", "--actor", "ops", "--why", "x"]).output.startswith("PAUSED")
    assert runner.invoke(app, ["trading", "deleverage", "--actor", "ops", "--why", "y"]).output.startswith("PAUSED")


def test_cli_audit_verify_names_the_first_broken_record(cli: tuple[CliRunner, typer.Typer], rig: Rig) -> None:
    runner, app = cli
    ok = runner.invoke(app, ["audit", "verify"])
    n = len(audit(rig))
    assert ok.exit_code == 0 and f"audit chain OK: {n} records, head seq {n}" in ok.output
    assert f"; anchor seq {n} (" in ok.output and ok.output.rstrip().endswith(") matches")
    with rig.store().engine.begin() as conn:
        conn.execute(update(m.audit_log).where(m.audit_log.c.seq == 3).values(actor="mallory"))
    broken = runner.invoke(app, ["audit", "verify"])
    assert broken.exit_code == 1
    assert broken.output.splitlines() == [
        f"AUDIT_CHAIN_BROKEN at seq 3: content does not match its hash (content edited) ({n} records read)"
    ]


def test_cli_execute_runs_one_session_and_is_idempotent(
    tmp_path: Path, policies_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIS_ENV", "ci")
    monkeypatch.delenv("AIS_APPROVAL_KEY", raising=False)
    monkeypatch.delenv("AIS_APPROVAL_KEY_FILE", raising=False)
    monkeypatch.delenv("AIS_LEDGER_URL", raising=False)
    r = make_rig(tmp_path, policies_dir)
    write_nightly(r.db)
    home = tmp_path / "dagster_home"
    home.mkdir()
    for k, v in {"AIS_RUNTIME_DIR": r.root, "AIS_WAREHOUSE": r.db, "AIS_POLICIES_DIR": policies_dir,
                 "DAGSTER_HOME": home}.items():
        monkeypatch.setenv(k, str(v))
    with dg.DagsterInstance.get() as instance:  # the nightly gates of D, in the CLI's instance
        dg.materialize(stand_ins({}), partition_key=D, instance=instance)
    app = typer.Typer()
    cli_ops.register(app)
    runner = CliRunner()

    no_key = runner.invoke(app, ["execute", "--as-of", D])
    assert no_key.exit_code == 1 and "SIGNING_KEY_MISSING" in no_key.output
    decided = query(r.db, "SELECT count(*) AS n FROM information_schema.tables WHERE table_name LIKE 'governance%'")
    assert decided["n"].iloc[0] == 0  # nothing was decided, let alone sent

    run = runner.invoke(app, ["execute", "--as-of", D, "--dev-key"])
    assert run.exit_code == 0, run.output
    key = r.root / "approval.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert "Orders:" in run.output and "FILLED" in run.output and "Positions:" in run.output
    assert "1 order(s) wait in the review queue" in run.output
    assert query(r.db, "SELECT symbol FROM execution_orders")["symbol"].tolist() == ["AAPL"]

    again = runner.invoke(app, ["execute", "--dev-key"])  # default: the latest nightly partition
    assert again.exit_code == 0 and "SKIP ALREADY_EXECUTED" in again.output and "Positions:" in again.output
    assert len(r.store().list_orders()) == 1
    os.environ.pop("AIS_APPROVAL_KEY_FILE", None)


def test_dev_key_is_never_generated_in_prod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIS_APPROVAL_KEY", raising=False)
    monkeypatch.delenv("AIS_APPROVAL_KEY_FILE", raising=False)
    with pytest.raises(typer.Exit):
        cli_ops.ensure_dev_signing_key(tmp_path, "prod")
    assert not (tmp_path / "approval.key").exists()
