"""The order management system (§I1, §I2, §J2, §J3).

``submit(approval, order)`` in order, failing closed at each step:

1. Idempotency: the key is derived from the intent (approval id + order version). A key seen
   before returns the original result when the payload is identical (no broker call) and raises
   ``IdempotencyConflictError`` when it is not.
2. The approval is verified (signature, expiry, single use) before anything else happens.
3. The order must parse, and the trading state must allow it (HALTED/PAUSED refuse; REDUCING
   admits only orders that reduce the ledger's position).
4. One ledger transaction consumes the approval and writes the intent (NEW, client order id).
5. The intent is audited; then the order moves to SUBMITTED and only then is the broker called.
6. The broker's answer (ack, fills, rejection) is applied through the transition table.

A process may die anywhere in that sequence. ``recover()`` asks the broker about every open
order by client order id: what the broker has is adopted (never resubmitted); an order the
broker has never seen is submitted only if its approval still verifies and trading allows it,
else it expires. Because the client order id is deterministic and the broker is idempotent on
it, even a crash inside the broker call cannot produce a second order.

Every decision is appended to the audit chain with reason codes; if the audit write fails the
system is HALTED (latched) and ``SystemHaltedError`` is raised.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ais_pipelines.brokers.base import (
    Broker,
    BrokerError,
    BrokerMode,
    BrokerOrder,
    BrokerRejectedError,
    LiveTradingRefusedError,
    OrderSide,
    OrderType,
)
from ais_pipelines.core import trading_state as ts
from ais_pipelines.core.approvals import (
    MIN_KEY_BYTES,
    ApprovalError,
    SignedApproval,
    SigningKeyMissingError,
    canonical_json,
    verify_approval,
)
from ais_pipelines.core.audit import AuditChain, AuditStore, AuditWriteError
from ais_pipelines.core.clock import Clock
from ais_pipelines.core.order_states import OPEN_STATES, TERMINAL_STATES, OrderEvent, OrderState
from ais_pipelines.core.reason_codes import ReasonCode
from ais_pipelines.core.trading_state import TradingStatus
from ais_pipelines.ledger.store import (
    ApprovalAlreadyUsedError,
    DuplicateOrderError,
    FillRecord,
    LedgerStore,
    OrderIntent,
    OrderRecord,
    ReconciliationMismatchError,
)

OMS_ACTOR = "oms"
_EPS = 1e-9


# --------------------------------------------------------------------------------------------
# errors and results


class OrderRefusedError(Exception):
    """The OMS refused the order before any broker call; nothing was sent."""

    def __init__(self, reason_codes: Iterable[ReasonCode], message: str):
        self.reason_codes = tuple(dict.fromkeys(ReasonCode(c) for c in reason_codes))
        super().__init__(f"{';'.join(self.reason_codes)}: {message}")

    @property
    def reason_code(self) -> ReasonCode:
        return self.reason_codes[0]


class IdempotencyConflictError(OrderRefusedError):
    """Same idempotency key, different payload."""

    def __init__(self, message: str):
        super().__init__([ReasonCode.IDEMPOTENCY_CONFLICT], message)


class SystemHaltedError(Exception):
    """A system-level fault (audit write failure) halted trading; the current action did not complete."""

    def __init__(self, reason_code: ReasonCode, message: str):
        self.reason_code = ReasonCode(reason_code)
        super().__init__(f"{self.reason_code}: {message}")


@dataclass(frozen=True)
class OrderSpec:
    """The executable fields of a signed order mapping (every field of which is signed)."""

    symbol: str
    side: OrderSide
    qty: float
    order_type: OrderType
    limit_price: float | None
    notional: float | None
    reduce_only: bool
    version: int

    @classmethod
    def from_mapping(cls, order: Mapping[str, Any]) -> OrderSpec:
        """Parse ``symbol, side, qty`` (+ optional ``order_type, limit_price, notional,
        reduce_only, version``); anything malformed is refused, never guessed."""
        try:
            symbol = str(order["symbol"]).strip()
            side = OrderSide(str(order["side"]).strip().upper())
            qty = float(order["qty"])
            order_type = OrderType(str(order.get("order_type") or "MARKET").strip().upper())
            limit = order.get("limit_price")
            limit_price = None if limit is None else float(limit)
            notional_raw = order.get("notional")
            notional = None if notional_raw is None else float(notional_raw)
            reduce_only = order.get("reduce_only", False)
            version = _version(order)
        except (KeyError, TypeError, ValueError) as exc:
            raise OrderRefusedError([ReasonCode.SCHEMA_VIOLATION], f"malformed order: {exc!r}") from exc
        if not symbol:
            raise OrderRefusedError([ReasonCode.SCHEMA_VIOLATION], "order has an empty symbol")
        if not math.isfinite(qty) or qty <= 0:
            raise OrderRefusedError(
                [ReasonCode.SCHEMA_VIOLATION], f"order quantity must be positive, got {qty}"
            )
        if order_type is OrderType.LIMIT and (
            limit_price is None or not math.isfinite(limit_price) or limit_price <= 0
        ):
            raise OrderRefusedError(
                [ReasonCode.SCHEMA_VIOLATION], "a limit order needs a positive limit_price"
            )
        if not isinstance(reduce_only, bool):
            raise OrderRefusedError([ReasonCode.SCHEMA_VIOLATION], "reduce_only must be a boolean")
        return cls(symbol, side, qty, order_type, limit_price, notional, reduce_only, version)


def _version(order: Mapping[str, Any]) -> int:
    raw = order.get("version", 1)
    if isinstance(raw, bool) or int(raw) != raw or int(raw) < 1:
        raise ValueError(f"order version must be a positive integer, got {raw!r}")
    return int(raw)


def payload_hash(order: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(dict(order))).hexdigest()


def idempotency_key(approval_id: str, order: Mapping[str, Any]) -> str:
    """Derived from the intent: one approval, one order version → one key (STYLE.md)."""
    try:
        version = _version(order)
    except (TypeError, ValueError) as exc:
        raise OrderRefusedError([ReasonCode.SCHEMA_VIOLATION], str(exc)) from exc
    return f"{approval_id}:v{version}"


def client_order_id_for(key: str) -> str:
    # Deterministic: a retry, a restart or a replay names the same order at the broker.
    return "ais-" + hashlib.sha256(key.encode()).hexdigest()[:28]


@dataclass(frozen=True)
class OrderResult:
    client_order_id: str
    idempotency_key: str
    approval_id: str
    symbol: str
    side: str
    qty: float
    state: OrderState
    filled_qty: float
    avg_fill_price: float | None
    broker_order_id: str | None
    mode: str
    reason_codes: tuple[str, ...]
    duplicate: bool = False  # True when answered from the ledger for a repeated submission

    @classmethod
    def from_record(cls, rec: OrderRecord, *, duplicate: bool = False) -> OrderResult:
        return cls(
            client_order_id=rec.client_order_id,
            idempotency_key=rec.idempotency_key,
            approval_id=rec.approval_id,
            symbol=rec.symbol,
            side=rec.side,
            qty=rec.qty,
            state=rec.state,
            filled_qty=rec.filled_qty,
            avg_fill_price=rec.avg_fill_price,
            broker_order_id=rec.broker_order_id,
            mode=rec.mode,
            reason_codes=rec.reason_codes,
            duplicate=duplicate,
        )

    def same_outcome(self, other: OrderResult) -> bool:
        """Equal apart from the ``duplicate`` marker."""
        return {**self.__dict__, "duplicate": None} == {**other.__dict__, "duplicate": None}


@dataclass
class RecoveryReport:
    adopted: list[str] = field(default_factory=list)  # the broker had it: ledger caught up
    resubmitted: list[str] = field(default_factory=list)  # the broker never saw it: sent once now
    expired: list[str] = field(default_factory=list)  # never sent and its approval has expired
    rejected: list[str] = field(default_factory=list)  # never sent and its approval no longer verifies
    held: list[str] = field(default_factory=list)  # never sent; trading state does not allow it now
    mismatches: list[str] = field(default_factory=list)  # ledger and broker disagree: trading paused
    unreachable: list[str] = field(default_factory=list)  # broker could not be asked: try again


# --------------------------------------------------------------------------------------------
# the OMS


class OrderManagementSystem:
    def __init__(
        self,
        ledger: LedgerStore,
        broker: Broker,
        signing_key: bytes,
        clock: Clock,
        audit: AuditChain | AuditStore,
        *,
        actor: str = OMS_ACTOR,
    ):
        if not isinstance(signing_key, bytes | bytearray) or len(signing_key) < MIN_KEY_BYTES:
            # No key → nothing starts (§I1).
            raise SigningKeyMissingError(f"the OMS needs a signing key of at least {MIN_KEY_BYTES} bytes")
        if getattr(broker, "mode", None) is BrokerMode.LIVE:
            raise LiveTradingRefusedError()
        self.ledger = ledger
        self.broker = broker
        self._key = bytes(signing_key)
        self.clock = clock
        self.audit = audit if isinstance(audit, AuditChain) else AuditChain(audit)
        self.actor = actor
        # Set when an audit write failed: refuse everything even if persisting HALTED failed too.
        self._halted_in_process: str | None = None

    # --- audit --------------------------------------------------------------------------------

    def _audit(
        self,
        event_type: str,
        subject: str,
        payload: Mapping[str, Any],
        reason_codes: Iterable[ReasonCode | str],
        *,
        actor: str | None = None,
    ) -> None:
        try:
            self.audit.append(
                event_type, actor or self.actor, subject, dict(payload), list(reason_codes), self.clock.now()
            )
        except AuditWriteError as exc:
            self._halt(exc.reason, str(exc))
            raise SystemHaltedError(exc.reason, f"audit write failed, trading halted: {exc}") from exc
        except Exception as exc:  # anything else that stops the record from existing is the same fault
            self._halt(ReasonCode.AUDIT_WRITE_FAILED, str(exc))
            raise SystemHaltedError(
                ReasonCode.AUDIT_WRITE_FAILED, f"audit write failed, trading halted: {exc}"
            ) from exc

    def _halt(self, reason: ReasonCode, why: str) -> None:
        self._halted_in_process = why
        now = self.clock.now()
        try:
            self.ledger.change_trading_status(
                lambda s: ts.halt(s, reason_code=reason, why=f"audit write failed: {why}"[:2000], now=now)
            )
            self.ledger.record_execution_event(
                "SYSTEM_HALTED", now=now, reason_codes=[reason], payload={"why": why}
            )
        except Exception:
            pass  # the in-process latch above still refuses every order of this process

    # --- trading state ------------------------------------------------------------------------

    def trading_status(self) -> TradingStatus:
        return self.ledger.current_trading_status()

    def change_trading_status(
        self, change: Callable[[TradingStatus], TradingStatus], event_type: str
    ) -> TradingStatus:
        """Persist a trading-state change (a function of ``core.trading_state``) and audit it."""
        before = self.ledger.current_trading_status()
        after = self.ledger.change_trading_status(change)
        if after != before:
            self._audit(
                event_type,
                "trading_state",
                {"from": str(before.mode), "to": str(after.mode), "why": after.why},
                after.reason_codes,
                actor=after.actor,
            )
        return after

    def pause(self, *, actor: str, why: str) -> TradingStatus:
        now = self.clock.now()
        return self.change_trading_status(
            lambda s: ts.pause(s, actor=actor, why=why, now=now), "trading.pause"
        )

    def deleverage(self, *, actor: str, why: str) -> TradingStatus:
        now = self.clock.now()
        return self.change_trading_status(
            lambda s: ts.deleverage(s, actor=actor, why=why, now=now), "trading.deleverage"
        )

    def kill_switch(self, *, actor: str, why: str) -> TradingStatus:
        now = self.clock.now()
        return self.change_trading_status(
            lambda s: ts.kill_switch(s, actor=actor, why=why, now=now), "trading.kill_switch"
        )

    def check_daily_loss(self, *, daily_loss: float, limit: float) -> TradingStatus:
        now = self.clock.now()
        return self.change_trading_status(
            lambda s: ts.check_daily_loss(s, daily_loss=daily_loss, limit=limit, now=now),
            "trading.kill_switch",
        )

    def resume(self, *, actor: str, why: str, to: ts.TradingMode = ts.TradingMode.ACTIVE) -> TradingStatus:
        now = self.clock.now()
        status = self.change_trading_status(
            lambda s: ts.resume(s, actor=actor, why=why, now=now, to=to), "trading.resume"
        )
        self._halted_in_process = None  # a person lifted the halt, and the audit of it succeeded
        return status

    def _is_reducing(self, spec: OrderSpec, exclude: str | None = None) -> bool:
        """Whether the order only shrinks the ledger's position (other open orders included).

        Computed from the ledger rather than trusting the order's ``reduce_only`` flag: in
        REDUCING a mislabelled order must not slip through.
        """
        pos = self.ledger.positions().get(spec.symbol)
        held = pos.qty if pos else 0.0
        pending = sum(
            o.qty - o.filled_qty
            for o in self.ledger.list_orders(OPEN_STATES)
            if o.symbol == spec.symbol and o.side == spec.side and o.client_order_id != exclude
        )
        if spec.side is OrderSide.SELL:
            return held > 0 and spec.qty + pending <= held + _EPS
        return held < 0 and spec.qty + pending <= -held + _EPS

    def _trading_refusal(self, spec: OrderSpec, exclude: str | None = None) -> ReasonCode | None:
        if self._halted_in_process is not None:
            return ReasonCode.TRADING_HALTED
        return self.ledger.current_trading_status().refusal(self._is_reducing(spec, exclude))

    # --- submit -------------------------------------------------------------------------------

    def submit(self, approval: SignedApproval, order: Mapping[str, Any]) -> OrderResult:
        now = self.clock.now()
        subject = f"approval:{approval.approval_id}"
        try:
            key = idempotency_key(approval.approval_id, order)
            phash = payload_hash(order)
        except (OrderRefusedError, TypeError, ValueError) as exc:
            codes = (
                exc.reason_codes if isinstance(exc, OrderRefusedError) else (ReasonCode.SIGNATURE_INVALID,)
            )
            self._audit("order.refused", subject, {"error": str(exc)}, codes)
            if isinstance(exc, OrderRefusedError):
                raise
            raise ApprovalError(
                ReasonCode.SIGNATURE_INVALID, f"order cannot be canonicalised: {exc}"
            ) from exc

        existing = self.ledger.get_order_by_idempotency_key(key)
        if existing is not None:
            return self._repeat(existing, approval, order, phash, key)

        try:
            verify_approval(approval, order, self._key, now, self.ledger.is_approval_used)
        except ApprovalError as exc:
            if exc.reason == ReasonCode.APPROVAL_REPLAYED:
                # Another process used it since the lookup above: the same intent is a repeat.
                again = self.ledger.get_order_by_idempotency_key(key)
                if again is not None:
                    return self._repeat(again, approval, order, phash, key)
            self._audit(
                "approval.refused", subject, {"idempotency_key": key, "error": str(exc)}, [exc.reason]
            )
            raise

        try:
            spec = OrderSpec.from_mapping(order)
        except OrderRefusedError as exc:
            self._audit(
                "order.refused", subject, {"idempotency_key": key, "error": str(exc)}, exc.reason_codes
            )
            raise
        refusal = self._trading_refusal(spec)
        if refusal is not None:
            self._audit(
                "order.refused",
                subject,
                {"idempotency_key": key, "symbol": spec.symbol, "side": str(spec.side), "qty": spec.qty},
                [refusal],
            )
            raise OrderRefusedError([refusal], f"trading state does not allow this order ({refusal})")

        cid = client_order_id_for(key)
        normalised = json.loads(canonical_json(dict(order)))  # exactly what was signed, as plain JSON
        intent = OrderIntent(
            client_order_id=cid,
            idempotency_key=key,
            approval_id=approval.approval_id,
            payload_hash=phash,
            payload=normalised,
            symbol=spec.symbol,
            side=str(spec.side),
            qty=spec.qty,
            order_type=str(spec.order_type),
            mode=str(getattr(self.broker, "mode", BrokerMode.PAPER)),
            limit_price=spec.limit_price,
            notional=spec.notional,
            reduce_only=spec.reduce_only,
        )
        try:
            rec = self.ledger.create_order_intent(
                intent, signature=approval.signature, expires_at=approval.expires_at, now=now
            )
        except (ApprovalAlreadyUsedError, DuplicateOrderError) as exc:
            # A concurrent submission of the same intent won the race: answer as a repeat.
            again = self.ledger.get_order_by_idempotency_key(key)
            if again is not None:
                return self._repeat(again, approval, order, phash, key)
            self._audit("approval.refused", subject, {"idempotency_key": key}, [ReasonCode.APPROVAL_REPLAYED])
            raise ApprovalError(ReasonCode.APPROVAL_REPLAYED, str(exc)) from exc

        self._audit(
            "order.intent",
            f"order:{cid}",
            {
                "idempotency_key": key,
                "approval_id": approval.approval_id,
                "order": normalised,
                "mode": intent.mode,
            },
            [ReasonCode.APPROVED],
        )
        return self._send(rec)

    def _repeat(
        self,
        existing: OrderRecord,
        approval: SignedApproval,
        order: Mapping[str, Any],
        phash: str,
        key: str,
    ) -> OrderResult:
        subject = f"order:{existing.client_order_id}"
        if existing.payload_hash != phash:
            # A forgery is a signature failure, not a conflict: only a validly signed order
            # (however old) can collide with an earlier intent.
            try:
                verify_approval(approval, order, self._key, self.clock.now(), lambda _id: False)
            except ApprovalError as exc:
                if exc.reason == ReasonCode.SIGNATURE_INVALID:
                    self._audit("approval.refused", subject, {"idempotency_key": key}, [exc.reason])
                    raise
            self._audit(
                "order.idempotency_conflict",
                subject,
                {
                    "idempotency_key": key,
                    "payload_hash": phash,
                    "original_payload_hash": existing.payload_hash,
                },
                [ReasonCode.IDEMPOTENCY_CONFLICT],
            )
            raise IdempotencyConflictError(f"idempotency key {key} was used with a different payload")
        stored = self.ledger.get_approval(existing.approval_id)
        if stored is None or not _same_signature(stored.signature, approval.signature):
            # Same intent, other signature: a forgery does not earn even the cached answer.
            self._audit("approval.refused", subject, {"idempotency_key": key}, [ReasonCode.SIGNATURE_INVALID])
            raise ApprovalError(
                ReasonCode.SIGNATURE_INVALID, f"signature does not match approval {approval.approval_id}"
            )
        self._audit("order.duplicate", subject, {"idempotency_key": key}, [ReasonCode.ALREADY_EXECUTED])
        return OrderResult.from_record(existing, duplicate=True)

    def _send(self, rec: OrderRecord, *, extra_codes: Iterable[ReasonCode] = ()) -> OrderResult:
        """NEW → SUBMITTED in the ledger, then (and only then) the broker call."""
        codes = list(extra_codes)
        now = self.clock.now()
        # Last look at the trading state: a kill switch pressed (by another process) since the
        # first check must still stop an order that has not left. It stays unsent for recover().
        refusal = self._trading_refusal(OrderSpec.from_mapping(rec.payload), exclude=rec.client_order_id)
        if refusal is not None:
            self._audit("order.held", f"order:{rec.client_order_id}", {"state": str(rec.state)}, [refusal])
            held = OrderResult.from_record(rec)
            return replace(held, reason_codes=(*held.reason_codes, str(refusal)))
        if rec.state is OrderState.NEW:
            rec = self.ledger.apply_order_event(
                rec.client_order_id,
                OrderEvent.SUBMIT,
                now=now,
                expected_state=OrderState.NEW,
                reason_codes=codes,
            )
        try:
            bo = self.broker.submit_order(
                rec.client_order_id, rec.symbol, rec.side, rec.qty, rec.order_type, rec.limit_price
            )
        except BrokerRejectedError as exc:
            reject_codes = [*codes, ReasonCode.BROKER_REJECTED, exc.reason_code]
            if exc.order is not None and exc.order.status is OrderState.REJECTED:
                return self._apply(rec, exc.order, reject_codes)
            rec = self.ledger.apply_order_event(
                rec.client_order_id,
                OrderEvent.REJECT,
                now=self.clock.now(),
                reason_codes=reject_codes,
                detail={"error": exc.detail},
            )
            self._audit("order.rejected", f"order:{rec.client_order_id}", {"error": exc.detail}, reject_codes)
            return OrderResult.from_record(rec)
        except Exception as exc:
            # Unknown outcome (timeout, transport): the order stays SUBMITTED and is settled by
            # asking the broker later (sync/recover) — resending blindly could duplicate it.
            code = exc.reason_code if isinstance(exc, BrokerError) else ReasonCode.BROKER_UNAVAILABLE
            self.ledger.record_execution_event(
                "BROKER_SUBMIT_FAILED",
                now=self.clock.now(),
                client_order_id=rec.client_order_id,
                reason_codes=[code],
                payload={"error": str(exc)},
            )
            self._audit("order.submit_unknown", f"order:{rec.client_order_id}", {"error": str(exc)}, [code])
            current = OrderResult.from_record(self.ledger.get_order(rec.client_order_id) or rec)
            return replace(current, reason_codes=(*current.reason_codes, str(code)))
        return self._apply(rec, bo, codes)

    # --- applying broker state ------------------------------------------------------------------

    def _apply(self, rec: OrderRecord, bo: BrokerOrder, codes: Iterable[ReasonCode] = ()) -> OrderResult:
        """Catch the ledger up with the broker's view of one order (broker is the truth, §J1)."""
        codes = list(codes)
        if bo.status is OrderState.PARTIALLY_FILLED:
            codes.append(ReasonCode.PARTIAL_FILL)
        if bo.status is OrderState.REJECTED:
            codes.append(ReasonCode.BROKER_REJECTED)
        if bo.reject_reason is not None:
            codes.append(bo.reject_reason)
        fills = [
            FillRecord(f.fill_id, rec.client_order_id, rec.symbol, rec.side, f.qty, f.price, f.fees, f.ts)
            for f in bo.fills
        ]
        try:
            if bo.client_order_id != rec.client_order_id:
                raise ReconciliationMismatchError(
                    f"broker answered {bo.client_order_id} for {rec.client_order_id}"
                )
            result = self.ledger.apply_broker_state(
                rec.client_order_id,
                target_state=bo.status,
                now=self.clock.now(),
                broker_order_id=bo.broker_order_id,
                fills=fills,
                filled_qty=bo.filled_qty,
                avg_fill_price=bo.avg_fill_price,
                reason_codes=codes,
                detail={"broker_status": str(bo.status), "reject_detail": bo.reject_detail}
                if bo.reject_detail
                else None,
            )
        except ReconciliationMismatchError as exc:
            self._mismatch(rec, str(exc))
            raise
        if result.events or result.new_fills:
            self._audit(
                "order.update",
                f"order:{rec.client_order_id}",
                {
                    "broker_order_id": bo.broker_order_id,
                    "events": [str(e) for e in result.events],
                    "state": str(result.order.state),
                    "fills": [
                        {"fill_id": f.fill_id, "qty": f.qty, "price": f.price, "fees": f.fees, "ts": f.ts}
                        for f in result.new_fills
                    ],
                    "filled_qty": result.order.filled_qty,
                },
                codes or [ReasonCode.RECONCILED],
            )
        return OrderResult.from_record(result.order)

    def _mismatch(self, rec: OrderRecord, why: str) -> None:
        """§J1: a ledger/broker disagreement raises an alert and pauses trading."""
        now = self.clock.now()
        self.ledger.record_execution_event(
            "RECONCILIATION_MISMATCH",
            now=now,
            client_order_id=rec.client_order_id,
            reason_codes=[ReasonCode.RECONCILIATION_MISMATCH],
            payload={"why": why},
        )
        self.ledger.change_trading_status(
            lambda s: ts.pause(
                s, actor=self.actor, why=why, now=now, reason_codes=(ReasonCode.RECONCILIATION_MISMATCH,)
            )
        )
        self._audit(
            "reconciliation.mismatch",
            f"order:{rec.client_order_id}",
            {"why": why},
            [
                ReasonCode.RECONCILIATION_MISMATCH,
                ReasonCode.TRADING_PAUSED,
            ],
        )

    def sync_order(self, client_order_id: str) -> OrderResult:
        """Pull the broker's view of one sent order (fills on later ticks, cancels, expiry)."""
        rec = self.ledger.get_order(client_order_id)
        if rec is None:
            raise KeyError(client_order_id)
        if rec.state in TERMINAL_STATES or rec.state is OrderState.NEW:
            return OrderResult.from_record(rec)
        bo = self.broker.get_order_by_client_id(client_order_id)
        if bo is None:
            return OrderResult.from_record(rec)  # not (yet) known to the broker: recover() decides
        return self._apply(rec, bo)

    def sync_open_orders(self) -> list[OrderResult]:
        """``sync_order`` for every sent, non-terminal order; mismatches are paused, not raised."""
        out: list[OrderResult] = []
        for rec in self.ledger.list_orders(OPEN_STATES - {OrderState.NEW}):
            try:
                out.append(self.sync_order(rec.client_order_id))
            except ReconciliationMismatchError:
                current = self.ledger.get_order(rec.client_order_id)
                if current is not None:
                    out.append(OrderResult.from_record(current))
        return out

    # --- recovery -----------------------------------------------------------------------------

    def recover(self) -> RecoveryReport:
        """Settle every open order after a restart, by client order id; never duplicates."""
        report = RecoveryReport()
        for rec in self.ledger.list_orders(OPEN_STATES):
            cid = rec.client_order_id
            try:
                bo = self.broker.get_order_by_client_id(cid)
            except Exception as exc:  # cannot know: leave it exactly as it is
                self.ledger.record_execution_event(
                    "RECOVERY_BROKER_UNREACHABLE",
                    now=self.clock.now(),
                    client_order_id=cid,
                    reason_codes=[ReasonCode.BROKER_UNAVAILABLE],
                    payload={"error": str(exc)},
                )
                report.unreachable.append(cid)
                continue
            if bo is not None:
                try:
                    self._apply(rec, bo, [ReasonCode.RECOVERED_AFTER_RESTART])
                except ReconciliationMismatchError:
                    report.mismatches.append(cid)
                    continue
                report.adopted.append(cid)
                continue
            if rec.state not in (OrderState.NEW, OrderState.SUBMITTED):
                # The ledger says the broker is working it; the broker has never heard of it.
                self._mismatch(rec, f"broker has no order {cid} that the ledger holds as {rec.state}")
                report.mismatches.append(cid)
                continue
            self._recover_unsent(rec, report)
        if not any(vars(report).values()):
            return report  # nothing was open: nothing to record
        self._audit(
            "oms.recovered",
            "oms",
            {k: list(v) for k, v in report.__dict__.items()},
            [ReasonCode.RECOVERED_AFTER_RESTART],
        )
        return report

    def _recover_unsent(self, rec: OrderRecord, report: RecoveryReport) -> None:
        """The broker never saw this order: send it once, if it may still be sent."""
        cid = rec.client_order_id
        now = self.clock.now()
        stored = self.ledger.get_approval(rec.approval_id)
        approval = (
            SignedApproval(stored.approval_id, stored.expires_at, stored.signature)
            if stored is not None
            else None
        )
        try:
            if approval is None:
                raise ApprovalError(
                    ReasonCode.SIGNATURE_INVALID, f"approval {rec.approval_id} missing from ledger"
                )
            # Re-verify against the stored payload: catches a ledger row edited while we were down.
            verify_approval(approval, rec.payload, self._key, now, lambda _id: False)
        except ApprovalError as exc:
            event = OrderEvent.EXPIRE if exc.reason is ReasonCode.APPROVAL_EXPIRED else OrderEvent.REJECT
            codes = [ReasonCode.RECOVERED_AFTER_RESTART, exc.reason]
            if event is OrderEvent.EXPIRE:
                codes.append(ReasonCode.INTENT_EXPIRED_AFTER_CRASH)
            self.ledger.apply_order_event(cid, event, now=now, reason_codes=codes, detail={"error": str(exc)})
            self._audit(
                "order.recovery_closed", f"order:{cid}", {"error": str(exc), "event": str(event)}, codes
            )
            (report.expired if event is OrderEvent.EXPIRE else report.rejected).append(cid)
            return
        spec = OrderSpec.from_mapping(rec.payload)
        refusal = self._trading_refusal(spec, exclude=cid)
        if refusal is not None:
            self._audit("order.recovery_held", f"order:{cid}", {"state": str(rec.state)}, [refusal])
            report.held.append(cid)
            return
        self._audit(
            "order.recovery_submit",
            f"order:{cid}",
            {"state": str(rec.state)},
            [ReasonCode.RECOVERED_AFTER_RESTART],
        )
        self._send(rec, extra_codes=[ReasonCode.RECOVERED_AFTER_RESTART])
        report.resubmitted.append(cid)

    # --- cancel -------------------------------------------------------------------------------

    def cancel(self, client_order_id: str, *, actor: str, why: str) -> OrderResult:
        if not actor.strip() or not why.strip():
            raise ValueError("a cancel needs an actor and a reason (why)")
        rec = self.ledger.get_order(client_order_id)
        if rec is None:
            raise KeyError(client_order_id)
        subject = f"order:{client_order_id}"
        if rec.state in TERMINAL_STATES:
            return OrderResult.from_record(rec)
        now = self.clock.now()
        if rec.state is OrderState.NEW:  # never sent (SUBMIT is written before any broker call)
            rec = self.ledger.apply_order_event(
                client_order_id,
                OrderEvent.CANCEL,
                now=now,
                expected_state=OrderState.NEW,
                detail={"why": why},
            )
            self._audit(
                "order.cancelled",
                subject,
                {"why": why, "sent": False},
                [ReasonCode.HUMAN_REJECTED],
                actor=actor,
            )
            return OrderResult.from_record(rec)
        if rec.state is not OrderState.CANCEL_PENDING:
            rec = self.ledger.apply_order_event(
                client_order_id, OrderEvent.CANCEL_REQUEST, now=now, detail={"why": why, "actor": actor}
            )
        self._audit("order.cancel_request", subject, {"why": why}, [ReasonCode.HUMAN_REJECTED], actor=actor)
        try:
            bo = self.broker.cancel_order(client_order_id)
        except BrokerRejectedError as exc:
            # Too late (filled/expired) or unknown: the broker's current view settles it.
            bo = exc.order or self.broker.get_order_by_client_id(client_order_id)
            if bo is None:
                return OrderResult.from_record(rec)
        return self._apply(rec, bo)


def _same_signature(a: str, b: str) -> bool:
    return hmac.compare_digest(
        a.lower().encode("ascii", "replace"), str(b).lower().encode("ascii", "replace")
    )
