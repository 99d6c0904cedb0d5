"""Human actions (issue 10 item 6): resume, kill-switch release, approve and reject only by a
person or role declared in policies/operators.yaml, compared case-insensitively; a service
identity can never do them, in any spelling. Refusals change nothing and say ACTOR_NOT_AUTHORIZED.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from ais_pipelines import control
from ais_pipelines.config import Policies, PolicyFileError
from ais_pipelines.core import trading_state as ts
from ais_pipelines.core.audit import AuditChain
from ais_pipelines.core.reason_codes import ReasonCode
from ais_pipelines.core.trading_state import TradingMode, TradingStateError
from ais_pipelines.ledger import LedgerStore, SqlAuditStore

T0 = datetime(2024, 3, 5, 15, 0, tzinfo=UTC)
ITEM = "review:2024-03-04:MSFT:BUY"
SERVICES = ["SYSTEM", "system", " System ", "oms", "OMS", "Sensor", "sensors", "governance", "Reconciliation"]
UNDECLARED = ["bob", "mallory", "jane", "jane.doe2"]


class Desk:
    """A ledger with one pending review item, its audit chain and the policies in force."""

    def __init__(self, tmp_path: Path, policies_dir: Path):
        self.ledger = LedgerStore.open(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
        self.audit = AuditChain(SqlAuditStore(self.ledger.engine))
        self.policies = Policies(policies_dir)
        self.ledger.enqueue_review(ITEM, {"symbol": "MSFT", "side": "BUY", "qty": 50, "as_of": "2024-03-04"},
                                   [ReasonCode.LOW_CONFIDENCE], T0)

    def set_mode(self, mode: TradingMode) -> None:
        change = {TradingMode.HALTED: ts.kill_switch, TradingMode.PAUSED: ts.pause}[mode]
        self.ledger.change_trading_status(lambda s: change(s, actor="risk.officer", why="drill", now=T0))

    def trading(self, action: str, actor: str, **kw: Any) -> ts.TradingStatus:
        return control.change_trading_state(self.ledger, self.audit, action, actor=actor, why="checked",
                                            now=T0, policies=self.policies, **kw)

    def approve(self, actor: str) -> control.ReviewApproval:
        # Authorization comes before the OMS is touched: refused actors never reach it.
        return control.approve_review(self.ledger, self.audit, None, b"k" * 32, ITEM,  # type: ignore[arg-type]
                                      actor=actor, why="checked", now=T0, policies=self.policies)

    def reject(self, actor: str) -> Any:
        return control.reject_review(self.ledger, self.audit, ITEM, actor=actor, why="checked", now=T0,
                                     policies=self.policies)

    def audit_events(self) -> list[str]:
        return [r.event_type for r in SqlAuditStore(self.ledger.engine).iter_records()]


@pytest.fixture()
def desk(tmp_path: Path, policies_dir: Path) -> Desk:
    return Desk(tmp_path, policies_dir)


def _refused(exc: pytest.ExceptionInfo[control.ControlError]) -> None:
    assert exc.value.reason_codes == (str(ReasonCode.ACTOR_NOT_AUTHORIZED),), exc.value.reason_codes


# --------------------------------------------------------------------------------------------
# service identities: never, in any spelling


@pytest.mark.parametrize("actor", SERVICES)
def test_service_identity_cannot_release_the_kill_switch(desk: Desk, actor: str) -> None:
    desk.set_mode(TradingMode.HALTED)
    before = desk.audit_events()
    with pytest.raises(control.ControlError, match="must be done by a person") as exc:
        desk.trading("resume", actor)
    _refused(exc)
    assert desk.ledger.current_trading_status().mode is TradingMode.HALTED
    assert desk.audit_events() == before  # nothing happened, so nothing is recorded as done


@pytest.mark.parametrize("actor", SERVICES)
def test_service_identity_cannot_resume_a_pause(desk: Desk, actor: str) -> None:
    desk.set_mode(TradingMode.PAUSED)
    with pytest.raises(control.ControlError) as exc:
        desk.trading("resume", actor)
    _refused(exc)
    assert desk.ledger.current_trading_status().mode is TradingMode.PAUSED


@pytest.mark.parametrize("actor", SERVICES)
def test_service_identity_cannot_approve_or_reject(desk: Desk, actor: str) -> None:
    for decide in (desk.approve, desk.reject):
        with pytest.raises(control.ControlError, match="must be done by a person") as exc:
            decide(actor)
        _refused(exc)
    item = desk.ledger.get_review(ITEM)
    assert (item.status, item.decided_by) == ("PENDING", None)


@pytest.mark.parametrize("actor", ["SYSTEM", "oms", "Sensor", "Governance "])
def test_pure_resume_refuses_service_identities_in_any_case(actor: str) -> None:
    """The state machine itself closes the loophole (OMS.resume and direct ledger calls use it)."""
    halted = ts.kill_switch(ts.initial_status(T0), actor="cro", why="incident", now=T0)
    with pytest.raises(TradingStateError, match="must be done by a person") as exc:
        ts.resume(halted, actor=actor, why="auto", now=T0)
    assert exc.value.reason_code is ReasonCode.ACTOR_NOT_AUTHORIZED


def test_a_service_declared_in_operators_yaml_is_refused_too(desk: Desk, policies_dir: Path) -> None:
    path = policies_dir / "operators.yaml"
    data = yaml.safe_load(path.read_text())
    data["services"] = [*data.get("services", []), "nightly_bot"]
    path.write_text(yaml.safe_dump(data))
    desk.policies = Policies(policies_dir)
    desk.set_mode(TradingMode.PAUSED)
    with pytest.raises(control.ControlError, match="service identity 'Nightly_Bot'") as exc:
        desk.trading("resume", "Nightly_Bot")
    _refused(exc)


# --------------------------------------------------------------------------------------------
# declared people and roles: case-insensitive, recorded as declared


def test_declared_person_in_another_case_releases_the_kill_switch(desk: Desk) -> None:
    desk.set_mode(TradingMode.HALTED)
    status = desk.trading("resume", "  JANE.Doe ")
    assert status.mode is TradingMode.ACTIVE and status.actor == "jane.doe"
    last = list(SqlAuditStore(desk.ledger.engine).iter_records())[-1]
    assert (last.event_type, last.actor) == ("trading.resume", "jane.doe")


def test_declared_role_in_another_case_rejects(desk: Desk) -> None:
    item = desk.reject("CRO")
    assert (item.status, item.decided_by) == ("REJECTED", "cro")


def test_declared_person_in_another_case_gets_past_authorization_to_approve(desk: Desk) -> None:
    # Paused book: authorization passes, then the trading state refuses (the next gate), so the
    # refusal names TRADING_PAUSED and not ACTOR_NOT_AUTHORIZED.
    desk.set_mode(TradingMode.PAUSED)
    with pytest.raises(control.ControlError) as exc:
        desk.approve("Jane.DOE")
    assert exc.value.reason_codes == (str(ReasonCode.TRADING_PAUSED),)


def test_a_role_without_release_may_lift_a_pause_but_not_the_kill_switch(desk: Desk) -> None:
    desk.set_mode(TradingMode.HALTED)
    with pytest.raises(control.ControlError, match="may not release") as exc:
        desk.trading("resume", "OPS")
    _refused(exc)
    assert desk.ledger.current_trading_status().mode is TradingMode.HALTED
    desk.trading("resume", "cro")
    desk.set_mode(TradingMode.PAUSED)
    assert desk.trading("resume", "Ops").mode is TradingMode.ACTIVE


def test_a_role_without_approve_is_refused(desk: Desk) -> None:
    with pytest.raises(control.ControlError, match="may not approve") as exc:
        desk.approve("ops")
    _refused(exc)


# --------------------------------------------------------------------------------------------
# undeclared actors; stricter actions need nobody's permission


@pytest.mark.parametrize("actor", UNDECLARED)
def test_undeclared_person_is_refused_everywhere(desk: Desk, actor: str) -> None:
    desk.set_mode(TradingMode.HALTED)
    for act in (lambda: desk.trading("resume", actor), lambda: desk.approve(actor), lambda: desk.reject(actor)):
        with pytest.raises(control.ControlError, match="not a person or role declared") as exc:
            act()
        _refused(exc)
    assert desk.ledger.current_trading_status().mode is TradingMode.HALTED
    assert desk.ledger.get_review(ITEM).status == "PENDING"


def test_kill_switch_pause_and_deleverage_work_without_operators_file(desk: Desk, policies_dir: Path) -> None:
    """Making trading stricter must always work; lifting it fails closed without the file."""
    (policies_dir / "operators.yaml").unlink()
    desk.policies = Policies(policies_dir)
    assert desk.trading("deleverage", "anyone").mode is TradingMode.REDUCING
    assert desk.trading("kill_switch", "anyone").mode is TradingMode.HALTED
    with pytest.raises(control.ControlError, match="operators.yaml") as exc:
        desk.trading("resume", "jane.doe")
    assert exc.value.reason_codes == (str(ReasonCode.POLICY_UNREADABLE),)
    assert desk.ledger.current_trading_status().mode is TradingMode.HALTED


# --------------------------------------------------------------------------------------------
# the operators policy itself


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda d: d["roles"].__setitem__("System", {"may": ["resume"]}), "roles.System: 'System' is a service"),
        (lambda d: d["people"].__setitem__("OMS", {"roles": ["cro"]}), "people.OMS: 'OMS' is a service"),
        (lambda d: d["people"]["jane.doe"].__setitem__("roles", ["ghost"]), "people.jane.doe.roles[0]: unknown role 'ghost'"),
        (lambda d: d["people"].__setitem__("CRO", {"roles": ["cro"]}), "people.CRO: 'CRO' is declared twice"),
        (lambda d: d["roles"]["cro"].__setitem__("may", ["launch"]), "roles.cro.may[0]"),
        (lambda d: d["roles"]["cro"].__setitem__("may", []), "roles.cro.may"),
    ],
)
def test_nonsense_operators_file_is_refused(policies_dir: Path, edit: Any, fragment: str) -> None:
    path = policies_dir / "operators.yaml"
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(PolicyFileError) as exc:
        _ = Policies(policies_dir).operators
    assert "operators.yaml" in str(exc.value) and fragment in str(exc.value), str(exc.value)
