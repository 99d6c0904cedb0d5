"""§I1–I2, §J2–J3: the OMS over a real ledger, the embedded paper broker and the audit chain."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, text, update

from ais_pipelines.brokers import (
    BrokerMode,
    BrokerUnavailableError,
    LiveTradingRefusedError,
    PaperBroker,
    PaperBrokerConfig,
    ShadowBroker,
)
from ais_pipelines.core.approvals import ApprovalError, SigningKeyMissingError, sign_approval
from ais_pipelines.core.audit import AuditChain
from ais_pipelines.core.clock import FixedClock
from ais_pipelines.core.order_states import OrderState
from ais_pipelines.core.reason_codes import ReasonCode
from ais_pipelines.core.trading_state import TradingMode, TradingStateError, kill_switch
from ais_pipelines.ledger import LedgerStore, OrderIntent, SqlAuditStore, create_ledger_engine, upgrade_ledger
from ais_pipelines.ledger import models as m
from ais_pipelines.oms import (
    IdempotencyConflictError,
    OrderManagementSystem,
    OrderRefusedError,
    SystemHaltedError,
    client_order_id_for,
)

PG_URL = os.environ.get("AIS_TEST_POSTGRES_URL")
T0 = datetime(2024, 3, 5, 15, 0, tzinfo=UTC)  # NYSE open
KEY = bytes(range(32))
ADV = {"AAPL": 1_000_000.0, "MSFT": 10_000.0}


class SimulatedCrash(BaseException):
    """A process death: not an ``Exception``, so no ``except Exception`` can swallow it."""


class SpyBroker:
    """Counts what reaches the broker; can die just before or just after the real submit."""

    def __init__(self, inner):
        self.inner = inner
        self.mode = inner.mode
        self.submits: list[str] = []  # client ids that reached inner.submit_order
        self.crash_before_submit = False
        self.crash_after_submit = False
        self.unavailable = False

    def submit_order(self, client_order_id, *args, **kwargs):
        if self.crash_before_submit:
            raise SimulatedCrash("died before the broker call")
        if self.unavailable:
            raise BrokerUnavailableError("timeout")
        self.submits.append(client_order_id)
        order = self.inner.submit_order(client_order_id, *args, **kwargs)
        if self.crash_after_submit:
            raise SimulatedCrash("died after the broker acknowledged")
        return order

    def __getattr__(self, name):
        return getattr(self.inner, name)


class Quotes:
    def __init__(self):
        self.book = {"AAPL": (99.99, 100.01), "MSFT": (399.9, 400.1)}

    def __call__(self, symbol, now):
        if symbol not in self.book:
            return None
        bid, ask = self.book[symbol]
        return bid, ask, now


class FlakyAuditStore:
    """SqlAuditStore that can be told to fail (disk full, lost connection …)."""

    def __init__(self, inner):
        self.inner = inner
        self.broken = False
        self.on_append = None  # hook: run something "concurrently" right after a record lands

    def append(self, record):
        if self.broken:
            raise OSError("No space left on device")
        self.inner.append(record)
        if self.on_append is not None:
            self.on_append(record)

    def last(self):
        return self.inner.last()

    def iter_records(self):
        return self.inner.iter_records()


class Rig:
    """Everything one OMS process needs; ``restart()`` builds a fresh process on the same state."""

    def __init__(self, make_engine: Callable[[], Engine], clock: FixedClock, quotes: Quotes, **broker_cfg):
        self.make_engine, self.clock, self.quotes, self.broker_cfg = make_engine, clock, quotes, broker_cfg
        self.ledger = LedgerStore(upgrade_ledger(make_engine()))
        self.paper = PaperBroker(
            self.ledger,
            clock,
            quotes,
            adv=ADV,
            sigma={"AAPL": 0.02, "MSFT": 0.01},
            config=PaperBrokerConfig(**broker_cfg),
        )
        self.spy = SpyBroker(self.paper)
        self.audit_store = FlakyAuditStore(SqlAuditStore(self.ledger.engine))
        self.oms = OrderManagementSystem(self.ledger, self.spy, KEY, clock, self.audit_store)

    def restart(self) -> Rig:
        self.ledger.dispose()
        return Rig(self.make_engine, self.clock, self.quotes, **self.broker_cfg)

    def audit_types(self) -> list[str]:
        return [r.event_type for r in self.audit_store.iter_records()]

    def audit_records(self):
        return list(self.audit_store.iter_records())


@pytest.fixture
def clock():
    return FixedClock(T0)


def sqlite_engines(path) -> Callable[[], Engine]:
    return lambda: create_ledger_engine(f"sqlite:///{path}")


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param(
            "postgres",
            marks=[
                pytest.mark.postgres,
                pytest.mark.skipif(
                    not PG_URL, reason="AIS_TEST_POSTGRES_URL is not set: no PostgreSQL server"
                ),
            ],
        ),
    ]
)
def rig(request, tmp_path, clock):
    if request.param == "sqlite":
        r = Rig(sqlite_engines(tmp_path / "ledger.sqlite"), clock, Quotes())
        yield r
        r.ledger.dispose()
        return
    # A private schema per test: every "process" of the test connects to the same one.
    schema = f"ais_test_{uuid.uuid4().hex[:10]}"
    admin = create_ledger_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    r = Rig(
        lambda: create_ledger_engine(PG_URL, connect_args={"options": f"-csearch_path={schema}"}),
        clock,
        Quotes(),
    )
    yield r
    r.ledger.dispose()
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


def approve(order: dict, approval_id: str = "apr-1", ttl: timedelta = timedelta(minutes=5), key: bytes = KEY):
    return sign_approval(order, approval_id, T0 + ttl, key)


BUY = {"symbol": "AAPL", "side": "BUY", "qty": 100, "order_type": "MARKET", "version": 1}


def assert_no_order(rig: Rig) -> None:
    assert rig.spy.submits == []
    assert rig.paper.list_orders() == []
    assert rig.ledger.list_orders() == []


# --- the happy path -------------------------------------------------------------------------


def test_valid_approval_is_filled_and_every_step_is_recorded(rig):
    result = rig.oms.submit(approve(BUY), BUY)
    assert result.state is OrderState.FILLED and result.filled_qty == 100 and not result.duplicate
    assert result.client_order_id == client_order_id_for("apr-1:v1")
    assert result.idempotency_key == "apr-1:v1" and result.mode == "PAPER"
    assert rig.spy.submits == [result.client_order_id]
    rec = rig.ledger.get_order(result.client_order_id)
    assert rec.broker_order_id == result.broker_order_id and rec.payload == BUY
    assert [(e.event, e.to_state) for e in rig.ledger.order_events(result.client_order_id)] == [
        ("CREATE", "NEW"),
        ("SUBMIT", "SUBMITTED"),
        ("FILL", "FILLED"),
    ]
    (f,) = rig.ledger.fills(result.client_order_id)
    assert f.qty == 100 and f.price == pytest.approx(result.avg_fill_price)
    assert rig.ledger.positions()["AAPL"].qty == 100
    assert rig.ledger.is_approval_used("apr-1")
    # The intent was audited before the broker's answer; the chain verifies.
    assert rig.audit_types() == ["order.intent", "order.update"]
    assert AuditChain(rig.audit_store).verify().ok
    intent_rec = rig.audit_records()[0]
    assert intent_rec.subject == f"order:{result.client_order_id}" and intent_rec.reason_codes == (
        "APPROVED",
    )


# --- approvals refused before any broker call ----------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda a, o: (a, {**o, "qty": 1000}), ReasonCode.SIGNATURE_INVALID),  # order tampered
        (lambda a, o: (replace(a, signature="0" * 64), o), ReasonCode.SIGNATURE_INVALID),
        (
            lambda a, o: (replace(a, expires_at=a.expires_at + timedelta(hours=1)), o),
            ReasonCode.SIGNATURE_INVALID,
        ),
        (lambda a, o: (replace(a, approval_id="apr-2"), o), ReasonCode.SIGNATURE_INVALID),
        (
            lambda a, o: (sign_approval(o, "apr-1", T0 + timedelta(minutes=5), b"x" * 32), o),
            ReasonCode.SIGNATURE_INVALID,
        ),
        (
            lambda a, o: (sign_approval(o, "apr-1", T0 - timedelta(seconds=1), KEY), o),
            ReasonCode.APPROVAL_EXPIRED,
        ),
        (
            lambda a, o: (sign_approval(o, "apr-1", T0, KEY), o),
            ReasonCode.APPROVAL_EXPIRED,
        ),  # expiry is exclusive
    ],
    ids=[
        "order-tampered",
        "signature-zeroed",
        "expiry-extended",
        "id-changed",
        "other-key",
        "expired",
        "expires-now",
    ],
)
def test_bad_approvals_are_refused_before_any_broker_call(rig, mutate, reason):
    approval, order = mutate(approve(BUY), BUY)
    with pytest.raises(ApprovalError) as info:
        rig.oms.submit(approval, order)
    assert info.value.reason == reason
    assert_no_order(rig)
    assert not rig.ledger.is_approval_used(approval.approval_id)
    (rec,) = rig.audit_records()
    assert rec.event_type == "approval.refused" and rec.reason_codes == (str(reason),)


def test_replayed_approval_is_refused_before_any_broker_call(rig):
    approval = approve(BUY)
    # Another writer already consumed this approval (under a different intent key).
    rig.ledger.create_order_intent(
        OrderIntent("other", "elsewhere:v1", "apr-1", "0" * 64, BUY, "AAPL", "BUY", 100, "MARKET", "PAPER"),
        signature=approval.signature,
        expires_at=approval.expires_at,
        now=T0,
    )
    with pytest.raises(ApprovalError) as info:
        rig.oms.submit(approval, BUY)
    assert info.value.reason == ReasonCode.APPROVAL_REPLAYED
    assert rig.spy.submits == [] and rig.paper.list_orders() == []
    assert [o.client_order_id for o in rig.ledger.list_orders()] == ["other"]


def test_missing_or_short_key_means_nothing_starts(rig):
    for key in (b"", b"short", None):
        with pytest.raises(SigningKeyMissingError):
            OrderManagementSystem(rig.ledger, rig.spy, key, rig.clock, rig.audit_store)


def test_malformed_order_is_refused(rig):
    order = {"symbol": "AAPL", "side": "HOLD", "qty": 1}
    with pytest.raises(OrderRefusedError) as info:
        rig.oms.submit(approve(order), order)
    assert info.value.reason_code is ReasonCode.SCHEMA_VIOLATION
    assert_no_order(rig)
    assert not rig.ledger.is_approval_used("apr-1")  # a refused order does not burn the approval


# --- idempotency --------------------------------------------------------------------------


def test_resubmission_returns_the_original_result_with_one_broker_call(rig):
    approval = approve(BUY)
    first = rig.oms.submit(approval, BUY)
    rig.clock.advance(minutes=10)  # even after the approval expired
    second = rig.oms.submit(approval, dict(BUY))
    assert second.duplicate and second.same_outcome(first)
    assert rig.spy.submits == [first.client_order_id]
    assert len(rig.ledger.list_orders()) == 1 and len(rig.ledger.fills()) == 1
    assert rig.audit_types()[-1] == "order.duplicate"
    # Float spelling of the same quantity is the same canonical payload.
    assert rig.oms.submit(approval, {**BUY, "qty": 100.0}).duplicate


def test_same_key_different_payload_is_a_conflict(rig):
    rig.oms.submit(approve(BUY), BUY)
    changed = {**BUY, "qty": 200}
    with pytest.raises(IdempotencyConflictError) as info:
        rig.oms.submit(approve(changed), changed)  # validly signed, same approval id and version
    assert info.value.reason_code is ReasonCode.IDEMPOTENCY_CONFLICT
    assert len(rig.spy.submits) == 1 and len(rig.ledger.list_orders()) == 1
    assert rig.audit_types()[-1] == "order.idempotency_conflict"
    # An unsigned variation of the same intent is a forgery, not a conflict.
    with pytest.raises(ApprovalError) as forged:
        rig.oms.submit(approve(BUY), changed)
    assert forged.value.reason == ReasonCode.SIGNATURE_INVALID
    assert len(rig.spy.submits) == 1


def test_a_new_version_is_a_new_order(rig):
    rig.oms.submit(approve(BUY), BUY)
    v2 = {**BUY, "version": 2}
    r2 = rig.oms.submit(approve(v2, "apr-2"), v2)
    assert r2.idempotency_key == "apr-2:v2" and r2.state is OrderState.FILLED
    assert len(rig.spy.submits) == 2


def test_forged_resubmission_does_not_get_the_cached_answer(rig):
    approval = approve(BUY)
    rig.oms.submit(approval, BUY)
    with pytest.raises(ApprovalError) as info:
        rig.oms.submit(replace(approval, signature="f" * 64), BUY)
    assert info.value.reason == ReasonCode.SIGNATURE_INVALID


# --- crashes and recovery -------------------------------------------------------------------


def test_crash_between_intent_and_broker_call_then_recover_sends_exactly_once(rig):
    rig.spy.crash_before_submit = True
    with pytest.raises(SimulatedCrash):
        rig.oms.submit(approve(BUY), BUY)
    cid = client_order_id_for("apr-1:v1")
    assert rig.ledger.get_order(cid).state is OrderState.SUBMITTED  # intent durable, outcome unknown
    assert rig.paper.list_orders() == []

    after = rig.restart()
    report = after.oms.recover()
    assert report.resubmitted == [cid] and report.adopted == []
    assert after.spy.submits == [cid]
    assert len(after.paper.list_orders()) == 1
    rec = after.ledger.get_order(cid)
    assert rec.state is OrderState.FILLED and ReasonCode.RECOVERED_AFTER_RESTART in rec.reason_codes
    # A second recovery (another restart) finds nothing to do.
    again = after.restart()
    assert again.oms.recover().resubmitted == [] and again.spy.submits == []
    assert len(again.paper.list_orders()) == 1
    again.ledger.dispose()


def test_crash_right_after_the_intent_write_leaves_new_and_recovers_once(rig, monkeypatch):
    real = rig.ledger.apply_order_event

    def die_on_submit(cid, event, **kw):
        raise SimulatedCrash("died before SUBMIT was written")

    monkeypatch.setattr(rig.ledger, "apply_order_event", die_on_submit)
    with pytest.raises(SimulatedCrash):
        rig.oms.submit(approve(BUY), BUY)
    monkeypatch.setattr(rig.ledger, "apply_order_event", real)
    cid = client_order_id_for("apr-1:v1")
    assert rig.ledger.get_order(cid).state is OrderState.NEW

    after = rig.restart()
    assert after.oms.recover().resubmitted == [cid]
    assert after.spy.submits == [cid] and len(after.paper.list_orders()) == 1
    assert after.ledger.get_order(cid).state is OrderState.FILLED


def test_crash_after_broker_ack_is_adopted_without_resubmitting(rig):
    rig.spy.crash_after_submit = True
    with pytest.raises(SimulatedCrash):
        rig.oms.submit(approve(BUY), BUY)
    cid = client_order_id_for("apr-1:v1")
    assert rig.spy.submits == [cid]
    assert rig.ledger.get_order(cid).state is OrderState.SUBMITTED
    broker_view = rig.paper.get_order_by_client_id(cid)
    assert broker_view.status is OrderState.FILLED

    after = rig.restart()
    report = after.oms.recover()
    assert report.adopted == [cid] and report.resubmitted == []
    assert after.spy.submits == []  # never sent again
    assert len(after.paper.list_orders()) == 1
    rec = after.ledger.get_order(cid)
    assert rec.state is OrderState.FILLED and rec.broker_order_id == broker_view.broker_order_id
    assert [f.fill_id for f in after.ledger.fills(cid)] == [f.fill_id for f in broker_view.fills]
    assert ReasonCode.RECOVERED_AFTER_RESTART in rec.reason_codes
    # Retrying the same submission after recovery is answered from the ledger.
    assert after.oms.submit(approve(BUY), BUY).duplicate and after.spy.submits == []


def test_unreachable_broker_leaves_the_order_submitted_until_asked(rig):
    rig.spy.unavailable = True
    result = rig.oms.submit(approve(BUY), BUY)
    assert result.state is OrderState.SUBMITTED and "BROKER_UNAVAILABLE" in result.reason_codes
    rig.spy.unavailable = False
    report = rig.oms.recover()
    assert report.resubmitted == [result.client_order_id]
    assert rig.ledger.get_order(result.client_order_id).state is OrderState.FILLED
    assert len(rig.paper.list_orders()) == 1


def test_recovery_expires_an_unsent_order_whose_approval_lapsed(rig):
    rig.spy.crash_before_submit = True
    with pytest.raises(SimulatedCrash):
        rig.oms.submit(approve(BUY), BUY)
    rig.clock.advance(minutes=6)
    after = rig.restart()
    cid = client_order_id_for("apr-1:v1")
    assert after.oms.recover().expired == [cid]
    rec = after.ledger.get_order(cid)
    assert rec.state is OrderState.EXPIRED and "APPROVAL_EXPIRED" in rec.reason_codes
    assert after.spy.submits == [] and after.paper.list_orders() == []


def test_recovery_refuses_an_intent_edited_while_down(rig):
    rig.spy.crash_before_submit = True
    with pytest.raises(SimulatedCrash):
        rig.oms.submit(approve(BUY), BUY)
    cid = client_order_id_for("apr-1:v1")
    with rig.ledger.engine.begin() as conn:
        conn.execute(
            update(m.orders).where(m.orders.c.client_order_id == cid).values(payload={**BUY, "qty": 9999})
        )
    after = rig.restart()
    assert after.oms.recover().rejected == [cid]
    assert after.ledger.get_order(cid).state is OrderState.REJECTED
    assert after.spy.submits == []


def test_recovery_holds_unsent_orders_while_trading_is_paused(rig):
    rig.spy.crash_before_submit = True
    with pytest.raises(SimulatedCrash):
        rig.oms.submit(approve(BUY), BUY)
    after = rig.restart()
    after.oms.pause(actor="ops", why="restart checks")
    cid = client_order_id_for("apr-1:v1")
    assert after.oms.recover().held == [cid]
    assert after.spy.submits == []
    after.oms.resume(actor="ops", why="checks done")
    assert after.oms.recover().resubmitted == [cid]


def test_broker_missing_a_working_order_is_a_mismatch_that_pauses(rig, tmp_path):
    result = rig.oms.submit(
        approve({**BUY, "order_type": "LIMIT", "limit_price": 50.0}),
        {**BUY, "order_type": "LIMIT", "limit_price": 50.0},
    )
    assert result.state is OrderState.ACCEPTED
    # The ledger is pointed at a broker that has never heard of the order.
    other = Rig(sqlite_engines(tmp_path / "other.sqlite"), rig.clock, rig.quotes)
    oms = OrderManagementSystem(rig.ledger, other.spy, KEY, rig.clock, rig.audit_store)
    report = oms.recover()
    assert report.mismatches == [result.client_order_id]
    status = rig.ledger.current_trading_status()
    assert status.mode is TradingMode.PAUSED and ReasonCode.RECONCILIATION_MISMATCH in status.reason_codes
    assert "RECONCILIATION_MISMATCH" in [e.kind for e in rig.ledger.execution_events(result.client_order_id)]
    other.ledger.dispose()


# --- fills over time, rejections, modes -----------------------------------------------------


def test_partial_fills_are_synced_tick_by_tick(rig):
    order = {"symbol": "MSFT", "side": "BUY", "qty": 230, "version": 1}  # ADV 10k, 1 % a tick
    first = rig.oms.submit(approve(order), order)
    assert first.state is OrderState.PARTIALLY_FILLED and first.filled_qty == 100
    assert "PARTIAL_FILL" in first.reason_codes
    rig.clock.advance(seconds=5)
    rig.paper.process_tick()
    (second,) = rig.oms.sync_open_orders()
    assert second.state is OrderState.PARTIALLY_FILLED and second.filled_qty == 200
    rig.clock.advance(seconds=5)
    rig.paper.process_tick()
    (third,) = rig.oms.sync_open_orders()
    assert third.state is OrderState.FILLED and third.filled_qty == 230
    assert rig.oms.sync_open_orders() == []
    events = [e.event for e in rig.ledger.order_events(first.client_order_id)]
    assert events == ["CREATE", "SUBMIT", "PARTIAL_FILL", "PARTIAL_FILL", "FILL"]
    assert [f.qty for f in rig.ledger.fills(first.client_order_id)] == [100, 100, 30]
    assert rig.ledger.positions()["MSFT"].qty == 230
    broker_fills = rig.paper.get_order_by_client_id(first.client_order_id).fills
    assert third.avg_fill_price == pytest.approx(sum(f.qty * f.price for f in broker_fills) / 230)
    assert rig.spy.submits == [first.client_order_id]


def test_broker_rejection_is_recorded_with_its_reason(rig):
    huge = {**BUY, "qty": 5_000}  # ~500k of AAPL against 100k cash
    result = rig.oms.submit(approve(huge), huge)
    assert result.state is OrderState.REJECTED
    assert "BROKER_REJECTED" in result.reason_codes
    assert [e.event for e in rig.ledger.order_events(result.client_order_id)] == [
        "CREATE",
        "SUBMIT",
        "REJECT",
    ]
    assert rig.audit_types()[-1] == "order.update"
    assert rig.ledger.positions() == {}


def test_market_closed_is_a_rejection(rig):
    rig.clock.set(datetime(2024, 3, 9, 15, 0, tzinfo=UTC))  # Saturday
    approval = sign_approval(BUY, "apr-1", rig.clock.now() + timedelta(minutes=5), KEY)
    result = rig.oms.submit(approval, BUY)
    assert result.state is OrderState.REJECTED
    assert {"BROKER_REJECTED", "MARKET_CLOSED"} <= set(result.reason_codes)


def test_shadow_mode_decides_and_records_but_never_submits(rig):
    shadow = ShadowBroker(rig.spy, rig.clock)
    oms = OrderManagementSystem(rig.ledger, shadow, KEY, rig.clock, rig.audit_store)
    result = oms.submit(approve(BUY), BUY)
    assert rig.spy.submits == [] and rig.paper.list_orders() == []
    assert result.mode == "SHADOW" and result.state is OrderState.CANCELLED
    assert "SHADOW_MODE" in result.reason_codes
    assert rig.ledger.get_order(result.client_order_id).payload == BUY  # the decision is kept
    assert rig.audit_types() == ["order.intent", "order.update"]


def test_live_broker_is_refused(rig):
    class LiveBroker(SpyBroker):
        pass

    live = LiveBroker(rig.paper)
    live.mode = BrokerMode.LIVE
    with pytest.raises(LiveTradingRefusedError) as info:
        OrderManagementSystem(rig.ledger, live, KEY, rig.clock, rig.audit_store)
    assert info.value.reason_code is ReasonCode.LIVE_TRADING_REFUSED


def test_cancel_a_working_order(rig):
    lim = {**BUY, "order_type": "LIMIT", "limit_price": 50.0}
    result = rig.oms.submit(approve(lim), lim)
    done = rig.oms.cancel(result.client_order_id, actor="trader", why="stale idea")
    assert done.state is OrderState.CANCELLED
    events = [e.event for e in rig.ledger.order_events(result.client_order_id)]
    assert events == ["CREATE", "SUBMIT", "ACCEPT", "CANCEL_REQUEST", "CANCEL"]
    with pytest.raises(ValueError):
        rig.oms.cancel(result.client_order_id, actor="trader", why="")


# --- trading state and audit failure --------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "code"),
    [
        (lambda oms: oms.kill_switch(actor="risk", why="drawdown"), ReasonCode.TRADING_HALTED),
        (lambda oms: oms.pause(actor="ops", why="maintenance"), ReasonCode.TRADING_PAUSED),
        (lambda oms: oms.check_daily_loss(daily_loss=0.031, limit=0.03), ReasonCode.TRADING_HALTED),
        (lambda oms: oms.deleverage(actor="risk", why="over gross"), ReasonCode.REDUCE_ONLY),
    ],
    ids=["kill-switch", "pause", "daily-loss", "reducing"],
)
def test_trading_state_refuses_before_the_broker(rig, action, code):
    action(rig.oms)
    with pytest.raises(OrderRefusedError) as info:
        rig.oms.submit(approve(BUY), BUY)
    assert info.value.reason_code is code
    assert_no_order(rig)
    assert not rig.ledger.is_approval_used("apr-1")  # still usable once trading resumes
    assert rig.audit_types()[-1] == "order.refused"


def test_reducing_state_admits_reduce_only_orders(rig):
    rig.oms.submit(approve(BUY), BUY)
    rig.oms.deleverage(actor="risk", why="over gross")
    sell = {"symbol": "AAPL", "side": "SELL", "qty": 60, "version": 1}
    assert rig.oms.submit(approve(sell, "apr-s1"), sell).state is OrderState.FILLED
    too_much = {"symbol": "AAPL", "side": "SELL", "qty": 60, "version": 1, "reduce_only": True}
    with pytest.raises(OrderRefusedError) as info:  # would flip to short: not reducing, whatever it claims
        rig.oms.submit(approve(too_much, "apr-s2"), too_much)
    assert info.value.reason_code is ReasonCode.REDUCE_ONLY
    assert rig.ledger.positions()["AAPL"].qty == 40


def test_kill_switch_pressed_after_the_intent_still_stops_the_send(rig):
    def press(record):
        if record.event_type == "order.intent":  # another process hits the kill switch now
            rig.ledger.change_trading_status(lambda s: kill_switch(s, actor="cro", why="stop", now=T0))

    rig.audit_store.on_append = press
    result = rig.oms.submit(approve(BUY), BUY)
    assert result.state is OrderState.NEW and "TRADING_HALTED" in result.reason_codes
    assert rig.spy.submits == [] and rig.paper.list_orders() == []
    assert rig.audit_types() == ["order.intent", "order.held"]


def test_kill_switch_is_latched_until_a_person_resumes(rig):
    rig.oms.check_daily_loss(daily_loss=0.04, limit=0.03)
    rig.oms.check_daily_loss(daily_loss=0.0, limit=0.03)  # recovered P&L does not lift it
    assert rig.oms.trading_status().mode is TradingMode.HALTED
    with pytest.raises(TradingStateError):
        rig.oms.resume(actor="alice", why="")
    assert rig.oms.trading_status().mode is TradingMode.HALTED
    rig.oms.resume(actor="alice", why="loss explained: data error")
    assert rig.oms.submit(approve(BUY), BUY).state is OrderState.FILLED
    kinds = rig.audit_types()
    assert kinds[:2] == ["trading.kill_switch", "trading.resume"]


def test_audit_write_failure_halts_trading(rig):
    rig.audit_store.broken = True
    with pytest.raises(SystemHaltedError) as info:
        rig.oms.submit(approve(BUY), BUY)
    assert info.value.reason_code is ReasonCode.AUDIT_WRITE_FAILED
    assert rig.spy.submits == [] and rig.paper.list_orders() == []  # never sent
    status = rig.ledger.current_trading_status()
    assert status.mode is TradingMode.HALTED and status.latched
    assert ReasonCode.AUDIT_WRITE_FAILED in status.reason_codes
    # The intent exists (NEW, unsent); with the audit back, trading stays halted until a person acts.
    rig.audit_store.broken = False
    other = {**BUY, "version": 2}
    with pytest.raises(OrderRefusedError) as refused:
        rig.oms.submit(approve(other, "apr-2"), other)
    assert refused.value.reason_code is ReasonCode.TRADING_HALTED
    assert rig.spy.submits == []
    held = rig.oms.recover()
    assert held.held == [client_order_id_for("apr-1:v1")]
    rig.oms.resume(actor="ops", why="disk replaced")
    assert rig.oms.recover().resubmitted == [client_order_id_for("apr-1:v1")]
    assert rig.spy.submits == [client_order_id_for("apr-1:v1")]
    assert AuditChain(rig.audit_store).verify().ok


def test_audit_failure_on_a_refusal_also_halts(rig):
    rig.audit_store.broken = True
    bad = replace(approve(BUY), signature="0" * 64)
    with pytest.raises(SystemHaltedError):
        rig.oms.submit(bad, BUY)
    assert rig.ledger.current_trading_status().mode is TradingMode.HALTED
