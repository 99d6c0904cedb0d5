"""§I2–I5, §J1: ``AlpacaPaperBroker`` (real alpaca-py/requests) against a loopback Alpaca trading stub."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from ais_pipelines.brokers.alpaca import (
    ALPACA_STATUS_MAP,
    AlpacaAuthError,
    AlpacaPaperBroker,
    map_alpaca_status,
)
from ais_pipelines.brokers.base import (
    Broker,
    BrokerError,
    BrokerRejectedError,
    BrokerUnavailableError,
    LiveTradingRefusedError,
    OrderSide,
    OrderType,
)
from ais_pipelines.core.approvals import sign_approval
from ais_pipelines.core.clock import FixedClock
from ais_pipelines.core.order_states import OrderState
from ais_pipelines.core.reason_codes import ReasonCode
from ais_pipelines.ledger import LedgerStore, SqlAuditStore, create_ledger_engine, upgrade_ledger
from ais_pipelines.oms import OrderManagementSystem, client_order_id_for
from tests.stubs.alpaca_trading_stub import NOT_UNIQUE, AlpacaTradingStub
from tests.stubs.http_stub import (
    StubResponse,
    loopback_guard,  # noqa: F401  (autouse: loopback only)
    )

T0 = datetime(2024, 3, 5, 15, 0, tzinfo=UTC)  # a Tuesday, 10:00 in New York: NYSE open
KEY = bytes(range(32))
CID = "ais-test-0001"




@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(T0)


@pytest.fixture
def stub(clock: FixedClock):
    with AlpacaTradingStub(clock=clock) as s:
        yield s
    assert not s.server.unmatched, [(r.method, r.path) for r in s.server.unmatched]


def make_broker(stub: AlpacaTradingStub, clock: FixedClock, **kw) -> AlpacaPaperBroker:
    opts = {"timeout_s": 2.0} | kw
    secret = opts.pop("secret_key", stub.secret_key)
    return AlpacaPaperBroker(stub.api_key, secret, clock, url_override=stub.base_url, **opts)


@pytest.fixture
def broker(stub: AlpacaTradingStub, clock: FixedClock) -> AlpacaPaperBroker:
    return make_broker(stub, clock)


# --- orders ---------------------------------------------------------------------------------


def test_submit_is_accepted_and_visible_by_client_id(stub, broker):
    assert isinstance(broker, Broker)
    order = broker.submit_order(CID, "AAPL", "BUY", 10, "MARKET")
    assert order.status is OrderState.ACCEPTED and order.client_order_id == CID
    assert order.broker_order_id == stub.created[0] and order.symbol == "AAPL"
    assert (order.side, order.qty, order.order_type, order.filled_qty) == (
        OrderSide.BUY,
        10.0,
        OrderType.MARKET,
        0.0,
    )
    assert order.created_at == T0 and order.fills == ()

    (post,) = stub.submissions()
    assert post.json() == {
        "symbol": "AAPL",
        "qty": 10.0,
        "side": "buy",
        "type": "market",
        "time_in_force": "day",
        "client_order_id": CID,
    }
    assert post.headers["apca-api-key-id"] == stub.api_key
    assert broker.get_order_by_client_id(CID) == order
    assert broker.get_order_by_client_id("never-sent") is None  # Alpaca's 404 → None


def test_limit_order_carries_its_price(stub, broker):
    order = broker.submit_order(CID, "MSFT", "BUY", 5, "LIMIT", 390.5)
    assert order.order_type is OrderType.LIMIT and order.limit_price == 390.5
    assert stub.submissions()[0].json()["limit_price"] == 390.5


def test_duplicate_client_order_id_returns_the_existing_order(stub, broker):
    first = broker.submit_order(CID, "AAPL", "BUY", 10)
    stub.fill(CID, price=100.25)
    again = broker.submit_order(CID, "AAPL", "BUY", 10)

    assert stub.created == [first.broker_order_id]  # exactly one order at Alpaca
    first_post, second_post = stub.submissions()
    assert (first_post.response_status, second_post.response_status) == (200, 422)
    assert second_post.response_json() == NOT_UNIQUE
    # Resolved by asking for the existing order, not by posting again.
    assert stub.server.requests_for("/v2/orders:by_client_order_id")
    assert again.broker_order_id == first.broker_order_id
    assert again.status is OrderState.FILLED and len(again.fills) == 1


def test_a_client_order_id_naming_another_order_is_not_adopted(stub, broker):
    broker.submit_order(CID, "AAPL", "BUY", 10)
    with pytest.raises(BrokerError) as info:
        broker.submit_order(CID, "MSFT", "BUY", 5)
    assert not isinstance(info.value, BrokerRejectedError | BrokerUnavailableError)
    assert "another Alpaca order" in str(info.value) and len(stub.created) == 1


def test_partial_then_full_fill(stub, broker, clock):
    broker.submit_order(CID, "AAPL", "BUY", 100, "LIMIT", 101.0)
    a1 = stub.fill(CID, qty=40, price=100.5)
    partial = broker.get_order_by_client_id(CID)
    assert partial.status is OrderState.PARTIALLY_FILLED and partial.filled_qty == 40
    assert [(f.fill_id, f.qty, f.price, f.ts) for f in partial.fills] == [(a1["id"], 40.0, 100.5, T0)]
    assert partial.avg_fill_price == pytest.approx(100.5)

    clock.advance(seconds=30)
    a2 = stub.fill(CID, price=100.75)
    full = broker.get_order_by_client_id(CID)
    assert full.status is OrderState.FILLED and full.filled_qty == 100
    assert [f.fill_id for f in full.fills] == [a1["id"], a2["id"]]
    assert [f.qty for f in full.fills] == [40.0, 60.0]
    assert full.avg_fill_price == pytest.approx((40 * 100.5 + 60 * 100.75) / 100)
    assert full.fills[1].ts == T0 + timedelta(seconds=30)
    # Executions are read from the FILL activities of that order.
    act = stub.server.requests_for("/v2/account/activities/FILL")[-1]
    assert act.param("order_id") == full.broker_order_id and act.param("direction") == "asc"


def test_fills_not_yet_in_the_activity_feed_keep_the_order_open(stub, broker):
    broker.submit_order(CID, "AAPL", "BUY", 100)
    stub.hide_fills = True
    stub.fill(CID, price=100.0)
    lagging = broker.get_order_by_client_id(CID)
    # Alpaca says filled, but no execution is visible yet: not terminal, so it is polled again.
    assert lagging.status is OrderState.PARTIALLY_FILLED and lagging.fills == ()
    assert lagging.filled_qty == 100
    stub.publish_hidden_fills()
    caught_up = broker.get_order_by_client_id(CID)
    assert caught_up.status is OrderState.FILLED and len(caught_up.fills) == 1


def test_activity_pages_are_followed(stub, broker, clock):
    broker.submit_order(CID, "AAPL", "BUY", 150)
    for _ in range(150):
        clock.advance(seconds=1)
        stub.fill(CID, qty=1, price=100.0)
    order = broker.get_order_by_client_id(CID)
    assert order.status is OrderState.FILLED and len({f.fill_id for f in order.fills}) == 150
    pages = stub.server.requests_for("/v2/account/activities/FILL")
    assert len(pages) == 2 and pages[1].param("page_token") == order.fills[99].fill_id


# --- status mapping -------------------------------------------------------------------------

ROUND_TRIP = {
    "pending_new": OrderState.SUBMITTED,
    "accepted": OrderState.SUBMITTED,
    "accepted_for_bidding": OrderState.SUBMITTED,
    "pending_review": OrderState.SUBMITTED,
    "held": OrderState.SUBMITTED,
    "new": OrderState.ACCEPTED,
    "pending_cancel": OrderState.CANCEL_PENDING,
    "canceled": OrderState.CANCELLED,
    "replaced": OrderState.CANCELLED,
    "expired": OrderState.EXPIRED,
    "rejected": OrderState.REJECTED,
    "done_for_day": OrderState.ACCEPTED,
    "pending_replace": OrderState.ACCEPTED,
    "stopped": OrderState.ACCEPTED,
    "suspended": OrderState.ACCEPTED,
    "calculated": OrderState.ACCEPTED,
}


@pytest.mark.parametrize(("alpaca_status", "state"), ROUND_TRIP.items(), ids=list(ROUND_TRIP))
def test_every_alpaca_status_maps_through_alpaca_py(stub, broker, alpaca_status, state):
    broker.submit_order(CID, "AAPL", "BUY", 10)
    stub.set_status(CID, alpaca_status)
    order = broker.get_order_by_client_id(CID)
    assert order.status is state
    if alpaca_status == "rejected":
        assert order.reject_reason is ReasonCode.BROKER_REJECTED


def test_the_mapping_covers_alpaca_py_statuses_and_fills_decide_the_open_ones():
    from alpaca.trading.enums import OrderStatus

    assert {s.value for s in OrderStatus} == set(ALPACA_STATUS_MAP)
    assert set(ROUND_TRIP) | {"partially_filled", "filled"} == set(ALPACA_STATUS_MAP)
    assert map_alpaca_status("partially_filled", 10, 4) is OrderState.PARTIALLY_FILLED
    assert map_alpaca_status("filled", 10, 10) is OrderState.FILLED
    assert map_alpaca_status("done_for_day", 10, 4) is OrderState.PARTIALLY_FILLED
    assert map_alpaca_status("calculated", 10, 10) is OrderState.FILLED
    assert map_alpaca_status("calculated", 10, 4) is OrderState.PARTIALLY_FILLED
    with pytest.raises(BrokerError):
        map_alpaca_status("teleported", 10, 0)


def test_a_status_alpaca_py_does_not_know_is_an_error_not_a_guess(stub, broker):
    broker.submit_order(CID, "AAPL", "BUY", 10)
    stub.set_status(CID, "teleported")
    with pytest.raises(BrokerError) as info:
        broker.get_order_by_client_id(CID)
    assert not isinstance(info.value, BrokerRejectedError | BrokerUnavailableError)


# --- errors ---------------------------------------------------------------------------------


def test_insufficient_buying_power_is_a_rejection_with_alpacas_message(stub, broker):
    with pytest.raises(BrokerRejectedError) as info:
        broker.submit_order(CID, "AAPL", "BUY", 5_000)  # 500k against 100k cash
    assert "insufficient buying power" in str(info.value)
    assert info.value.reason_code is ReasonCode.BROKER_REJECTED
    (post,) = stub.submissions()
    assert post.response_status == 403 and post.response_json()["code"] == 40310000  # Alpaca's wire
    assert stub.created == []


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (422, {"code": 40010001, "message": "insufficient buying power"}),
        (422, {"code": 42210000, "message": "qty must be integer for non-fractionable assets"}),
        (400, {"code": 40010001, "message": "request body format is invalid"}),
    ],
    ids=["422-buying-power", "422-qty", "400"],
)
def test_business_rejections_carry_alpacas_message(stub, broker, status, body):
    stub.server.script("/v2/orders", StubResponse(status=status, body=body), method="POST")
    with pytest.raises(BrokerRejectedError) as info:
        broker.submit_order(CID, "AAPL", "BUY", 10)
    assert body["message"] in str(info.value) and info.value.order is None
    assert stub.created == [] and len(stub.submissions()) == 1  # refused, looked up, not resent


def test_wrong_credentials_are_a_permanent_error_without_retry(stub, clock):
    broker = make_broker(stub, clock, secret_key="wrong-secret")
    with pytest.raises(AlpacaAuthError) as info:
        broker.submit_order(CID, "AAPL", "BUY", 10)
    assert isinstance(info.value, BrokerError)
    assert not isinstance(info.value, BrokerRejectedError | BrokerUnavailableError)
    assert "401" in str(info.value) and "credentials" in str(info.value)
    assert len(stub.server.requests) == 1 and stub.created == []
    with pytest.raises(AlpacaAuthError):
        broker.get_account()
    assert len(stub.server.requests) == 2


def test_forbidden_outside_an_order_refusal_is_an_access_error(stub, broker):
    stub.server.fail("/v2/account", 403, body={"message": "forbidden"})
    with pytest.raises(AlpacaAuthError) as info:
        broker.get_account()
    assert "403" in str(info.value) and "permissions" in str(info.value)
    # A 403 on a submission without Alpaca's business code is an access problem too, not a rejection.
    stub.server.script("/v2/orders", StubResponse(status=403, body={"message": "forbidden"}), method="POST")
    with pytest.raises(AlpacaAuthError):
        broker.submit_order(CID, "AAPL", "BUY", 10)
    assert stub.created == []


@pytest.mark.parametrize("status", [429, 500, 503, 504])
def test_transient_statuses_are_unavailable_and_not_retried_by_the_sdk(stub, broker, status):
    stub.server.script("/v2/orders", StubResponse(status=status, body={"message": "busy"}), method="POST")
    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError) as info:
        broker.submit_order(CID, "AAPL", "BUY", 10)
    assert time.monotonic() - started < 1.0  # alpaca-py's 3 × 3 s retry on 429/504 is off
    assert str(status) in str(info.value)
    assert len(stub.server.requests) == 1 and stub.created == []
    # The order was never created, so asking again finds nothing and the OMS may resend.
    assert broker.get_order_by_client_id(CID) is None


def test_reads_fail_as_unavailable_on_503(stub, broker):
    for path, call in [
        ("/v2/account", broker.get_account),
        ("/v2/positions", broker.get_positions),
        ("/v2/clock", lambda: broker.is_market_open(T0)),
        ("/v2/orders:by_client_order_id", lambda: broker.get_order_by_client_id(CID)),
    ]:
        stub.server.fail(path, 503)
        with pytest.raises(BrokerUnavailableError):
            call()
    assert len(stub.server.requests) == 4


def test_a_hanging_server_times_out_as_unavailable(stub, clock):
    broker = make_broker(stub, clock, timeout_s=0.3)
    stub.server.hang("/v2/account", seconds=5)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError) as info:
        broker.get_account()
    assert time.monotonic() - started < 2.0 and "Timeout" in str(info.value)


def test_live_trading_is_refused_before_any_request(stub, clock):
    with pytest.raises(LiveTradingRefusedError) as info:
        make_broker(stub, clock, paper=False)
    assert info.value.reason_code is ReasonCode.LIVE_TRADING_REFUSED
    with pytest.raises(LiveTradingRefusedError):
        AlpacaPaperBroker("k", "s", clock, url_override="https://api.alpaca.markets")
    assert stub.server.requests == []


def test_keys_are_never_printed(stub, broker):
    assert stub.secret_key not in repr(broker) and stub.api_key not in repr(broker)


# --- symbols, positions, account, clock ------------------------------------------------------


def test_crypto_is_sent_gtc_with_a_slash_and_fx_is_refused(stub, broker):
    order = broker.submit_order(CID, "BTC-USD", "BUY", 0.5)
    body = stub.submissions()[0].json()
    assert (body["symbol"], body["time_in_force"]) == ("BTC/USD", "gtc")
    assert order.symbol == "BTC/USD" and order.qty == 0.5
    stub.fill(CID, price=50_000.0)
    pos = broker.get_positions()["BTC/USD"]
    wire = stub.server.requests_for("/v2/positions")[-1].response_json()
    assert wire[0]["symbol"] == "BTCUSD"  # Alpaca's position spelling, mapped back
    assert (pos.symbol, pos.qty, pos.avg_price) == ("BTC/USD", 0.5, 50_000.0)

    before = len(stub.server.requests)
    with pytest.raises(BrokerRejectedError) as info:
        broker.submit_order("ais-fx", "EUR/USD", "BUY", 1000)
    assert info.value.reason_code is ReasonCode.SYMBOL_NOT_ALLOWED
    with pytest.raises(BrokerRejectedError):
        broker.submit_order("ais-fut", "GC=F", "BUY", 1)
    assert len(stub.server.requests) == before  # refused locally


def test_invalid_orders_are_refused_without_a_request(stub, broker):
    for args in [("AAPL", "HOLD", 1), ("AAPL", "BUY", 0), ("AAPL", "BUY", float("nan"))]:
        with pytest.raises(BrokerRejectedError):
            broker.submit_order(CID, *args)
    with pytest.raises(BrokerRejectedError):
        broker.submit_order(CID, "AAPL", "BUY", 1, "LIMIT", None)
    assert stub.server.requests == []


def test_positions_and_account(stub, broker):
    assert broker.get_positions() == {}
    broker.submit_order(CID, "AAPL", "BUY", 10)
    stub.fill(CID, price=100.0)
    (pos,) = broker.get_positions().values()
    assert (pos.symbol, pos.qty, pos.avg_price) == ("AAPL", 10.0, 100.0)
    account = broker.get_account()
    assert account.cash == pytest.approx(99_000.0) and account.equity == pytest.approx(100_000.0)
    # Alpaca's paper account offers 2× margin; the unlevered mandate only sees cash buying power.
    assert account.buying_power == pytest.approx(99_000.0)


def test_market_clock_open_and_closed(stub, broker, clock):
    assert broker.is_market_open(T0) is True
    assert stub.server.requests_for("/v2/clock")
    clock.set(datetime(2024, 3, 9, 15, 0, tzinfo=UTC))  # Saturday
    assert broker.is_market_open(clock.now()) is False
    clock.set(datetime(2024, 3, 11, 13, 0, tzinfo=UTC))  # Monday 09:00 New York, before the open
    assert broker.is_market_open(clock.now()) is False
    # Alpaca's clock says closed, next open 13:30Z (DST began on the 10th): ``now`` past it is open.
    assert broker.is_market_open(datetime(2024, 3, 11, 13, 45, tzinfo=UTC)) is True


# --- cancel and list -----------------------------------------------------------------------


def test_cancel_a_working_order(stub, broker):
    broker.submit_order(CID, "AAPL", "BUY", 10, "LIMIT", 90.0)
    done = broker.cancel_order(CID)
    assert done.status is OrderState.CANCELLED
    assert stub.server.requests_for("/v2/orders/{order_id}", method="DELETE")
    with pytest.raises(BrokerRejectedError) as info:
        broker.cancel_order(CID)
    assert info.value.order.status is OrderState.CANCELLED
    with pytest.raises(BrokerRejectedError):
        broker.cancel_order("never-sent")


def test_cancel_pending_then_confirmed(stub, broker):
    stub.cancel_status = "pending_cancel"
    broker.submit_order(CID, "AAPL", "BUY", 10, "LIMIT", 90.0)
    assert broker.cancel_order(CID).status is OrderState.CANCEL_PENDING
    stub.confirm_cancel(CID)
    assert broker.get_order_by_client_id(CID).status is OrderState.CANCELLED


def test_cancel_loses_the_race_to_a_fill(stub, broker):
    broker.submit_order(CID, "AAPL", "BUY", 10, "LIMIT", 101.0)
    real = stub._cancel

    def fill_first(req):  # the order fills while the cancel is on its way
        stub.fill(CID, price=100.0)
        return real(req)

    stub.server.route("DELETE", "/v2/orders/{order_id}", stub._authed(fill_first))
    with pytest.raises(BrokerRejectedError) as info:
        broker.cancel_order(CID)
    assert "not cancelable" in str(info.value)
    assert info.value.order.status is OrderState.FILLED and len(info.value.order.fills) == 1


def test_list_orders(stub, broker, clock):
    broker.submit_order("ais-a", "AAPL", "BUY", 10)
    clock.advance(seconds=1)
    broker.submit_order("ais-b", "MSFT", "BUY", 5, "LIMIT", 300.0)
    stub.fill("ais-a", price=100.0)
    every = broker.list_orders()
    assert [o.client_order_id for o in every] == ["ais-a", "ais-b"]
    assert every[0].status is OrderState.FILLED and len(every[0].fills) == 1
    assert [o.client_order_id for o in broker.list_orders(open_only=True)] == ["ais-b"]
    assert stub.server.requests_for("/v2/orders", method="GET")[-1].param("status") == "open"


# --- end to end with the OMS ------------------------------------------------------------------


class SimulatedCrash(BaseException):
    """A process death: not an ``Exception``, so no ``except Exception`` can swallow it."""


class CrashAfterAck:
    """The broker acknowledges the order, then the process dies before the ledger hears of it."""

    def __init__(self, inner: AlpacaPaperBroker):
        self.inner, self.mode = inner, inner.mode

    def submit_order(self, *args, **kwargs):
        self.inner.submit_order(*args, **kwargs)
        raise SimulatedCrash("died after the broker acknowledged")

    def __getattr__(self, name):
        return getattr(self.inner, name)


class Process:
    """One OMS process over the shared SQLite ledger file and the stub."""

    def __init__(self, path, stub: AlpacaTradingStub, clock: FixedClock, wrap=None, **broker_kw):
        self.ledger = LedgerStore(upgrade_ledger(create_ledger_engine(f"sqlite:///{path}")))
        self.broker = make_broker(stub, clock, **broker_kw)
        broker = wrap(self.broker) if wrap else self.broker
        self.oms = OrderManagementSystem(self.ledger, broker, KEY, clock, SqlAuditStore(self.ledger.engine))


BUY = {"symbol": "AAPL", "side": "BUY", "qty": 100, "order_type": "MARKET", "version": 1}


def approve(order: dict, approval_id: str = "apr-1"):
    return sign_approval(order, approval_id, T0 + timedelta(minutes=5), KEY)


def test_oms_crash_after_broker_ack_then_recover_never_sends_twice(stub, clock, tmp_path):
    db = tmp_path / "ledger.sqlite"
    first = Process(db, stub, clock, wrap=CrashAfterAck)
    with pytest.raises(SimulatedCrash):
        first.oms.submit(approve(BUY), BUY)
    cid = client_order_id_for("apr-1:v1")
    assert first.ledger.get_order(cid).state is OrderState.SUBMITTED  # ledger never saw the ack
    assert len(stub.created) == 1 and stub.order(cid)["client_order_id"] == cid
    first.ledger.dispose()

    after = Process(db, stub, clock)  # restart: fresh process, same ledger file, same broker
    report = after.oms.recover()
    assert report.adopted == [cid] and report.resubmitted == []
    assert len(stub.submissions()) == 1 and len(stub.created) == 1  # no second order at Alpaca
    rec = after.ledger.get_order(cid)
    assert rec.state is OrderState.ACCEPTED and rec.broker_order_id == stub.created[0]
    assert ReasonCode.RECOVERED_AFTER_RESTART in rec.reason_codes

    # Fills arrive later and are pulled by client order id.
    clock.advance(seconds=10)
    a1 = stub.fill(cid, qty=30, price=100.10)
    assert after.oms.sync_order(cid).state is OrderState.PARTIALLY_FILLED
    clock.advance(seconds=10)
    a2 = stub.fill(cid, price=100.20)
    done = after.oms.sync_order(cid)
    assert done.state is OrderState.FILLED and done.filled_qty == 100
    assert [f.fill_id for f in after.ledger.fills(cid)] == [a1["id"], a2["id"]]
    assert after.ledger.positions()["AAPL"].qty == 100
    assert [e.event for e in after.ledger.order_events(cid)] == [
        "CREATE",
        "SUBMIT",
        "ACCEPT",
        "PARTIAL_FILL",
        "FILL",
    ]
    # Broker is the truth (§J1): the ledger agrees with Alpaca's positions.
    assert after.broker.get_positions()["AAPL"].qty == after.ledger.positions()["AAPL"].qty
    # The same approval again is answered from the ledger: still one order at Alpaca.
    assert after.oms.submit(approve(BUY), BUY).duplicate
    assert len(stub.submissions()) == 1
    after.ledger.dispose()


def test_oms_lost_submit_response_stays_submitted_then_recovers_once(stub, clock, tmp_path):
    proc = Process(tmp_path / "ledger.sqlite", stub, clock, timeout_s=0.3)
    stub.lose_next_submit_response(seconds=3)  # Alpaca creates the order; the answer never arrives
    result = proc.oms.submit(approve(BUY), BUY)
    assert result.state is OrderState.SUBMITTED and "BROKER_UNAVAILABLE" in result.reason_codes
    assert len(stub.created) == 1

    report = proc.oms.recover()
    assert report.adopted == [result.client_order_id] and report.resubmitted == []
    assert len(stub.submissions()) == 1 and len(stub.created) == 1
    assert proc.ledger.get_order(result.client_order_id).state is OrderState.ACCEPTED
    proc.ledger.dispose()


def test_oms_records_alpacas_rejection(stub, clock, tmp_path):
    proc = Process(tmp_path / "ledger.sqlite", stub, clock)
    huge = {**BUY, "qty": 5_000}
    result = proc.oms.submit(approve(huge), huge)
    assert result.state is OrderState.REJECTED and "BROKER_REJECTED" in result.reason_codes
    assert [e.event for e in proc.ledger.order_events(result.client_order_id)] == [
        "CREATE",
        "SUBMIT",
        "REJECT",
    ]
    assert stub.created == []
    proc.ledger.dispose()
