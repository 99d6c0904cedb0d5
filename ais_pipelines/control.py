"""The human control plane (§H5, §J2, §J3) as plain functions: the Dagster jobs and the CLI call these.

Every override is a named person with a written reason, recorded in the ledger and appended
to the audit chain (``event_type``, ``actor``, ``why``, reason codes). An audit write failure
halts trading (:func:`ais_pipelines.execution.audit_or_halt`).

* Trading state: ``kill_switch`` (HALTED, latched), ``pause`` (PAUSED), ``deleverage``
  (REDUCING: reduce-only orders), ``resume`` (back to ACTIVE/REDUCING; the only way out of a
  latch). None of these needs a signing key or a broker: a kill switch must always work.
* Review queue: ``reject_review`` records the decision; ``approve_review`` re-checks the hard
  rules with a fresh quote (a person overrides REVIEW rules, never REJECT rules), records the
  decision, signs a fresh approval and submits it through the OMS with all of its checks.
* ``verify_audit``: walks the chain and names the first broken record.

Resume, kill-switch release (resume from HALTED), approve and reject are human actions: the
actor must be a person or role declared in ``policies/operators.yaml`` with that permission,
compared case-insensitively; service identities never qualify (ACTOR_NOT_AUTHORIZED). Making
trading stricter (kill switch, pause, deleverage) needs no such file: it must always work.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from ais_pipelines.config import Permission, Policies, PolicyFileError
from ais_pipelines.core import trading_state as ts
from ais_pipelines.core.actors import ActorNotAuthorizedError
from ais_pipelines.core.approvals import ApprovalError
from ais_pipelines.core.audit import AuditChain, VerifyResult, verify_store
from ais_pipelines.core.reason_codes import ReasonCode
from ais_pipelines.core.trading_state import TradingMode, TradingStateError, TradingStatus
from ais_pipelines.ledger.store import LedgerStore, ReviewDecisionError, ReviewItem, SqlAuditStore

if TYPE_CHECKING:  # pandas, the execution module and the OMS load only where used (CLI speed)
    import pandas as pd

    from ais_pipelines.execution import ApprovedOrder
    from ais_pipelines.oms.oms import OrderManagementSystem, OrderResult

ACTIONS = ("kill_switch", "pause", "resume", "deleverage")
REVIEW_DECISIONS = ("APPROVE", "REJECT")


class ControlError(Exception):
    """A control action was refused; nothing changed. ``reason_codes`` says why."""

    def __init__(self, message: str, reason_codes: tuple[str, ...] = ()):
        super().__init__(message)
        self.reason_codes = tuple(str(c) for c in reason_codes)


def _who(actor: str, why: str) -> tuple[str, str]:
    if not isinstance(actor, str) or not actor.strip() or not isinstance(why, str) or not why.strip():
        raise ControlError("every override needs an actor (who) and a reason (why)",
                           (ReasonCode.OVERRIDE_UNJUSTIFIED,))
    return actor.strip(), why.strip()


def authorize(policies: Policies | None, actor: str, action: Permission) -> str:
    """The declared spelling of ``actor`` if ``policies/operators.yaml`` lets it take ``action``.

    ``policies=None`` reads the default directory (``AIS_POLICIES_DIR``). An unreadable or
    invalid operators file refuses the action (fail closed), reason POLICY_UNREADABLE.
    """
    try:
        operators = (policies or Policies()).operators
    except PolicyFileError as exc:
        raise ControlError(f"{action} refused: {exc}", (str(exc.reason_code),)) from exc
    try:
        return operators.authorize(actor, action)
    except ActorNotAuthorizedError as exc:
        raise ControlError(str(exc), (str(exc.reason_code),)) from exc


# --------------------------------------------------------------------------------------------
# trading state


def trading_status(ledger: LedgerStore) -> TradingStatus:
    return ledger.current_trading_status()


def change_trading_state(
    ledger: LedgerStore,
    audit: AuditChain,
    action: str,
    *,
    actor: str,
    why: str,
    now: datetime,
    to: str = "ACTIVE",
    policies: Policies | None = None,
) -> TradingStatus:
    """Apply one action of :data:`ACTIONS` and audit who did it and why.

    The state is persisted first (a kill switch must hold even if the audit write then fails,
    which halts anyway); the audit record names ``from``/``to``/``why``. ``resume`` needs the
    ``resume`` permission, or ``release`` when the book is HALTED (see :func:`authorize`).
    """
    from ais_pipelines.execution import audit_or_halt

    if action not in ACTIONS:
        raise ControlError(f"action must be one of {ACTIONS}, got {action!r}", (ReasonCode.USAGE_ERROR,))
    actor, why = _who(actor, why)

    def _resume(s: TradingStatus) -> TradingStatus:
        # Decided on the state read under the ledger's lock: a halt that lands just before
        # this resume needs the release permission, not the weaker resume.
        who = authorize(policies, actor, "release" if s.mode is TradingMode.HALTED else "resume")
        return ts.resume(s, actor=who, why=why, now=now, to=TradingMode(to))

    funcs: dict[str, Callable[[TradingStatus], TradingStatus]] = {
        "kill_switch": lambda s: ts.kill_switch(s, actor=actor, why=why, now=now),
        "pause": lambda s: ts.pause(s, actor=actor, why=why, now=now),
        "deleverage": lambda s: ts.deleverage(s, actor=actor, why=why, now=now),
        "resume": _resume,
    }
    before = ledger.current_trading_status()
    try:
        after = ledger.change_trading_status(funcs[action])
    except TradingStateError as exc:
        raise ControlError(str(exc), (str(exc.reason_code),)) from exc
    if action == "resume":
        actor = after.actor  # the declared spelling, as recorded in the trading state
    audit_or_halt(
        audit,
        ledger,
        f"trading.{action}",
        actor,
        "trading_state",
        {"from": str(before.mode), "to": str(after.mode), "why": why, "changed": after != before},
        after.reason_codes if after != before else (),
        now,
    )
    return after


# --------------------------------------------------------------------------------------------
# review queue


def list_reviews(ledger: LedgerStore, status: str | None = "PENDING") -> pd.DataFrame:
    import pandas as pd

    rows = [
        {
            "item_id": r.item_id,
            "status": r.status,
            "symbol": r.order_payload.get("symbol"),
            "side": r.order_payload.get("side"),
            "qty": r.order_payload.get("qty"),
            "as_of": r.order_payload.get("as_of"),
            "reasons": ";".join(r.reasons),
            "created_at": r.created_at,
            "decided_by": r.decided_by,
            "why": r.why,
        }
        for r in ledger.list_reviews(status)
    ]
    return pd.DataFrame(rows, columns=["item_id", "status", "symbol", "side", "qty", "as_of", "reasons",
                                       "created_at", "decided_by", "why"])


def pending_reviews_of(ledger: LedgerStore, as_of: str) -> int:
    """Items of session ``as_of`` still waiting for a person (the ledger's queue, not D's REVIEW
    decisions: a re-run of D finds its items already decided)."""
    day = str(as_of)[:10]
    return sum(1 for r in ledger.list_reviews("PENDING") if str(r.order_payload.get("as_of", ""))[:10] == day)


def _pending(ledger: LedgerStore, item_id: str) -> ReviewItem:
    item = ledger.get_review(item_id)
    if item is None:
        raise ControlError(f"review item {item_id} does not exist (see `ais review list --status ALL`)",
                           (ReasonCode.REVIEW_ITEM_NOT_FOUND,))
    if item.status != "PENDING":
        raise ControlError(f"review item {item_id} is already {item.status}", (ReasonCode.REVIEW_ALREADY_DECIDED,))
    return item


def reject_review(
    ledger: LedgerStore,
    audit: AuditChain,
    item_id: str,
    *,
    actor: str,
    why: str,
    now: datetime,
    policies: Policies | None = None,
) -> ReviewItem:
    actor, why = _who(actor, why)
    actor = authorize(policies, actor, "reject")
    _pending(ledger, item_id)
    from ais_pipelines.execution import audit_or_halt  # only once there is something to decide
    try:
        item = ledger.decide_review(item_id, approve=False, actor=actor, why=why, now=now)
    except ReviewDecisionError as exc:
        raise ControlError(str(exc), (ReasonCode.REVIEW_ALREADY_DECIDED,)) from exc
    audit_or_halt(audit, ledger, "review.rejected", actor, f"review:{item_id}",
                  {"why": why, "order": item.order_payload}, [ReasonCode.HUMAN_REJECTED], now)
    return item


@dataclass(frozen=True)
class ReviewApproval:
    item: ReviewItem
    approval: ApprovedOrder
    result: OrderResult | None  # None when the OMS refused (see refused_codes)
    refused_codes: tuple[str, ...] = ()


def approve_review(
    ledger: LedgerStore,
    audit: AuditChain,
    oms: OrderManagementSystem,
    key: bytes,
    item_id: str,
    *,
    actor: str,
    why: str,
    now: datetime,
    ttl_s: int = 300,
    recheck: Callable[[Mapping[str, Any]], list[str]] | None = None,
    policies: Policies | None = None,
) -> ReviewApproval:
    """A person approves a queued order: re-check hard rules, record, sign, submit through the OMS.

    The trading state must allow the order (else ``ControlError`` TRADING_HALTED/PAUSED/REDUCE_ONLY).
    ``recheck(payload)`` returns the REJECT-rule codes the order hits now; any → ``ControlError``
    and the item stays PENDING (e.g. retry once the market opens). The fresh approval signs the
    queued payload plus who approved it, so it is a new intent with its own idempotency key.
    """
    from ais_pipelines.execution import audit_or_halt, sign_order
    from ais_pipelines.oms.oms import OrderRefusedError

    actor, why = _who(actor, why)
    actor = authorize(policies, actor, "approve")
    item = _pending(ledger, item_id)
    # The trading state first: approving into a halted book would decide an item nothing can send.
    refusal = ledger.current_trading_status().refusal(bool(item.order_payload.get("reduce_only", False)))
    if refusal is not None:
        raise ControlError(f"trading state refuses new orders ({refusal}): review item {item_id} stays PENDING",
                           (str(refusal),))
    if recheck is not None:
        codes = recheck(item.order_payload)
        if codes:
            audit_or_halt(audit, ledger, "review.approve_blocked", actor, f"review:{item_id}",
                          {"why": why, "hard_rules": codes}, codes, now)
            raise ControlError(f"review item {item_id} now hits hard rule(s) {codes}: not approved", tuple(codes))
    try:
        item = ledger.decide_review(item_id, approve=True, actor=actor, why=why, now=now)
    except ReviewDecisionError as exc:
        raise ControlError(str(exc), (ReasonCode.REVIEW_ALREADY_DECIDED,)) from exc
    audit_or_halt(audit, ledger, "review.approved", actor, f"review:{item_id}",
                  {"why": why, "order": item.order_payload}, [ReasonCode.HUMAN_APPROVED], now)
    payload = {**item.order_payload, "review_item_id": item_id, "approved_by": actor}
    approved = sign_order(payload, now + timedelta(seconds=ttl_s), key)
    ledger.record_approval(approved.approval.approval_id, approved.payload, approved.approval.signature,
                           approved.approval.expires_at, now)
    audit_or_halt(audit, ledger, "approval.issued", actor, f"approval:{approved.approval.approval_id}",
                  {"order_id": approved.order_id, "expires_at": approved.approval.expires_at,
                   "review_item_id": item_id}, [ReasonCode.HUMAN_APPROVED], now)
    try:
        result = oms.submit(approved.approval, approved.payload)
    except (OrderRefusedError, ApprovalError) as exc:
        codes = exc.reason_codes if isinstance(exc, OrderRefusedError) else (exc.reason,)
        return ReviewApproval(item, approved, None, tuple(str(c) for c in codes))
    return ReviewApproval(item, approved, result)


APPROVAL_TTL_S = 300  # an approval is good for 5 minutes of the execution clock


def _session_of(as_of: str) -> date | None:
    try:
        return date.fromisoformat(as_of[:10])
    except ValueError:
        return None


def approve_item(
    policies: Policies,
    warehouse_path: str,
    ledger: Any,
    signing_key: Any,
    execution_clock: Any,
    broker: Any,
    item_id: str,
    *,
    actor: str,
    why: str,
) -> dict[str, Any]:
    """The APPROVE path of the CLI and of ``review_decision_job``: who first, the key, then a fresh
    session for the item's D (warehouse snapshot, quote, broker), recheck, sign, submit, work.

    ``ledger``/``signing_key``/``execution_clock``/``broker`` are the settings of
    :mod:`ais_pipelines.trading_env` (or their Dagster resources). Refusals: ``ControlError``.
    """
    from ais_pipelines import execution as ex
    from ais_pipelines.oms.oms import OrderManagementSystem
    from ais_pipelines.trading_env import open_trading_session
    from ais_pipelines.warehouse import read_table
    from ais_pipelines.warehouse_store import connect_warehouse

    actor, why = _who(actor, why)
    authorize(policies, actor, "approve")  # an undeclared or service actor opens no session, fetches no quote
    store = ledger.store()
    item = _pending(store, item_id)
    key = signing_key.key()  # fail closed before any broker call
    as_of = str(item.order_payload.get("as_of"))
    try:
        # The rules in force on the item's decision session (issue 13: policy effective dates).
        env_policy = ex.load_environment_policy(policy_dir=policies.directory, as_of=_session_of(as_of))
    except ex.PolicyError as exc:
        raise ControlError(str(exc), (exc.reason,)) from exc
    with connect_warehouse(warehouse_path) as con:
        session = open_trading_session(policies, con, as_of, ledger, execution_clock, broker,
                                       not_before=ex.latest_activity(store))
        history = read_table(con, "pnl_history")
    oms = OrderManagementSystem(session.ledger, session.broker, key, session.clock, session.audit)
    outcome = approve_review(
        session.ledger, session.audit, oms, key, item_id, actor=actor, why=why, now=session.clock.now(),
        ttl_s=APPROVAL_TTL_S, recheck=lambda payload: ex.hard_rule_hits(session, env_policy, payload, history),
        policies=policies,
    )
    if outcome.result is None:
        raise ControlError(f"the OMS refused the approved order of {item_id}", outcome.refused_codes)
    ex.work_orders(oms, session.broker, session.clock, broker.ticks, broker.tick_interval_s)
    order = session.ledger.get_order(outcome.result.client_order_id)
    assert order is not None
    return {"item_id": item_id, "status": outcome.item.status, "approval_id": outcome.approval.approval.approval_id,
            "client_order_id": order.client_order_id, "symbol": order.symbol, "side": order.side, "qty": order.qty,
            "state": str(order.state), "filled_qty": order.filled_qty, "avg_fill_price": order.avg_fill_price}


# --------------------------------------------------------------------------------------------
# audit


def verify_audit(ledger: LedgerStore, anchor: Any = None) -> VerifyResult:
    """The chain, against the last published anchor when one is given (a truncated tail is a break)."""
    return verify_store(SqlAuditStore(ledger.engine), anchor)
