"""§I4/§I5: the embedded paper broker — hours, impact-priced and partial fills, rejections, restarts."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from ais_pipelines.brokers import (
    BrokerMode,
    BrokerRejectedError,
    BrokerUnavailableError,
    LiveTradingRefusedError,
    OrderSide,
    PaperBroker,
    PaperBrokerConfig,
    ShadowBroker,
    make_broker,
    resolve_mode,
)
from ais_pipelines.core.clock import FixedClock, SimulatedClock
from ais_pipelines.core.order_states import OrderState
from ais_pipelines.core.reason_codes import ReasonCode
from ais_pipelines.ledger import LedgerStore

# Tuesday 2024-03-05 15:00 UTC = 10:00 New York: NYSE open (14:30–21:00 UTC before DST).
T0 = datetime(2024, 3, 5, 15, 0, tzinfo=UTC)
SATURDAY = datetime(2024, 3, 9, 15, 0, tzinfo=UTC)


class Quotes:
    """A quote source the test controls: (bid, ask) per symbol, stamped "now" unless frozen."""

    def __init__(self, clock: FixedClock):
        self.clock = clock
        self.book = {"AAPL": (99.99, 100.01), "MSFT": (399.9, 400.1)}
        self.frozen_at: datetime | None = None
        self.fail = False

    def __call__(self, symbol: str, now: datetime):
        if self.fail:
            raise ConnectionError("feed down")
        if symbol not in self.book:
            return None
        bid, ask = self.book[symbol]
        return bid, ask, self.frozen_at or now


@pytest.fixture
def clock():
    return FixedClock(T0)


@pytest.fixture
def quotes(clock):
    return Quotes(clock)


@pytest.fixture
def url(tmp_path):
    return f"sqlite:///{tmp_path / 'ledger.sqlite'}"


@pytest.fixture
def ledger(url):
    store = LedgerStore.open(url)
    yield store
    store.dispose()


ADV = {"AAPL": 1_000_000.0, "MSFT": 10_000.0}
SIGMA = {"AAPL": 0.02, "MSFT": 0.01}


def make(ledger, clock, quotes, **cfg) -> PaperBroker:
    return PaperBroker(ledger, clock, quotes, adv=ADV, sigma=SIGMA, config=PaperBrokerConfig(**cfg))


def expected_price(
    side: str, bid: float, ask: float, sigma: float, qty: float, adv: float, mult: float = 1.0
) -> float:
    """§H1 written out by hand: mid ± m·(σ·√(q/ADV)·0.1·10⁴ · 1.5 + spread/2) bps."""
    mid = (bid + ask) / 2
    spread_bps = (ask - bid) / mid * 1e4
    temporary = sigma * math.sqrt(qty / adv) * 0.1 * 1e4
    bps = mult * (temporary + 0.5 * temporary + spread_bps / 2)
    return mid * (1 + (1 if side == "BUY" else -1) * bps / 1e4)


def test_regime_multiplier_of_the_impact_model_raises_the_fill_price(ledger, clock, quotes):
    broker = make(
        ledger, clock, quotes, regime="VOLATILE", max_participation_per_tick=0.05, starting_cash=2e6
    )
    order = broker.submit_order("v1", "AAPL", "BUY", 10_000, "LIMIT", 101.0)
    px = expected_price("BUY", 99.99, 100.01, 0.02, 10_000, 1_000_000, mult=1.5)
    assert px == pytest.approx(100.0 * (1 + 6.0 / 1e4))  # 1.5 × (2 + 1 + 1) bps
    assert order.status is OrderState.FILLED and order.avg_fill_price == pytest.approx(px)


def test_market_order_fills_at_mid_plus_impact(ledger, clock, quotes):
    broker = make(ledger, clock, quotes)
    order = broker.submit_order("c1", "AAPL", "BUY", 100)
    px = expected_price("BUY", 99.99, 100.01, 0.02, 100, 1_000_000)
    assert px == pytest.approx(100.013)  # 0.2 + 0.1 bps impact + 1 bp half spread
    assert order.status is OrderState.FILLED and order.filled_qty == 100
    assert order.avg_fill_price == pytest.approx(px)
    assert order.side is OrderSide.BUY and order.broker_order_id.startswith("paper-")
    (f,) = order.fills
    assert (f.qty, f.ts, f.fees) == (100, T0, 0.0) and f.price == pytest.approx(px)
    assert broker.get_positions()["AAPL"].qty == 100
    acct = broker.get_account()
    assert acct.cash == pytest.approx(100_000 - 100 * px)
    assert acct.equity == pytest.approx(acct.cash + 100 * 100.0)


def test_sell_fills_below_mid_and_fees_are_charged(ledger, clock, quotes):
    broker = make(ledger, clock, quotes, fee_bps=10)
    broker.submit_order("b", "AAPL", "BUY", 100)
    sold = broker.submit_order("s", "AAPL", "SELL", 40)
    px = expected_price("SELL", 99.99, 100.01, 0.02, 40, 1_000_000)
    assert sold.avg_fill_price == pytest.approx(px) and px < 100
    assert sold.fills[0].fees == pytest.approx(40 * px * 10 / 1e4)
    assert broker.get_positions()["AAPL"].qty == 60


def test_large_orders_fill_partially_over_ticks(ledger, clock, quotes):
    broker = make(
        ledger, clock, quotes, max_participation_per_tick=0.01, starting_cash=1e6
    )  # MSFT: 100 a tick
    first = broker.submit_order("big", "MSFT", "BUY", 250)
    assert first.status is OrderState.PARTIALLY_FILLED and first.filled_qty == 100
    clock.advance(seconds=10)
    (second,) = broker.process_tick()
    assert second.status is OrderState.PARTIALLY_FILLED and second.filled_qty == 200
    clock.advance(seconds=10)
    (third,) = broker.process_tick()
    assert third.status is OrderState.FILLED and third.filled_qty == 250
    assert [f.qty for f in third.fills] == [100, 100, 50]
    assert [f.fill_id for f in third.fills] == [f"{third.broker_order_id}-F000{i}" for i in (1, 2, 3)]
    assert third.fills[2].price == pytest.approx(expected_price("BUY", 399.9, 400.1, 0.01, 50, 10_000))
    assert third.avg_fill_price == pytest.approx(sum(f.qty * f.price for f in third.fills) / 250)
    assert broker.process_tick() == []  # nothing left to work
    # issue 12: list_orders reads every order's fills in one query — the same orders as one by one
    broker.submit_order("small", "AAPL", "BUY", 10)
    listed = broker.list_orders()
    assert listed == [broker.get_order_by_client_id(c) for c in ("big", "small")]
    assert [len(o.fills) for o in listed] == [3, 1]


@pytest.mark.parametrize(
    ("kwargs", "reason", "fragment"),
    [
        ({"symbol": "NOPE"}, ReasonCode.UNKNOWN_SYMBOL, "no quotes"),
        ({"qty": 0}, ReasonCode.BROKER_REJECTED, "quantity must be positive"),
        ({"qty": -5}, ReasonCode.BROKER_REJECTED, "quantity must be positive"),
        ({"qty": float("nan")}, ReasonCode.BROKER_REJECTED, "quantity must be positive"),
        ({"qty": 2_000}, ReasonCode.BROKER_REJECTED, "insufficient buying power"),
        ({"side": "SELL", "qty": 1}, ReasonCode.BROKER_REJECTED, "insufficient position"),
        ({"order_type": "LIMIT"}, ReasonCode.BROKER_REJECTED, "limit price"),
        ({"side": "HOLD"}, ReasonCode.BROKER_REJECTED, "invalid side"),
    ],
)
def test_rejections_carry_reason_codes_and_are_kept(ledger, clock, quotes, kwargs, reason, fragment):
    broker = make(ledger, clock, quotes)
    args = {"symbol": "AAPL", "side": "BUY", "qty": 10, "order_type": "MARKET", **kwargs}
    with pytest.raises(BrokerRejectedError) as info:
        broker.submit_order("r1", args["symbol"], args["side"], args["qty"], args["order_type"])
    assert info.value.reason_code is reason and fragment in str(info.value)
    kept = broker.get_order_by_client_id("r1")
    assert kept.status is OrderState.REJECTED and kept.reject_reason is reason
    assert info.value.order == kept
    # Re-sending the same client id does not create a second order.
    assert broker.submit_order("r1", "AAPL", "BUY", 10) == kept
    assert broker.get_positions() == {}


def test_market_closed_is_rejected_on_the_injected_clock(ledger, quotes):
    clock = FixedClock(SATURDAY)
    quotes.clock = clock
    broker = make(ledger, clock, quotes)
    assert not broker.is_market_open(SATURDAY) and broker.is_market_open(T0)
    with pytest.raises(BrokerRejectedError) as info:
        broker.submit_order("w1", "AAPL", "BUY", 10)
    assert info.value.reason_code is ReasonCode.MARKET_CLOSED


def test_missing_adv_means_no_impact_estimate_and_no_order(ledger, clock, quotes):
    quotes.book["TSLA"] = (199.0, 201.0)
    broker = make(ledger, clock, quotes)
    with pytest.raises(BrokerRejectedError) as info:
        broker.submit_order("t1", "TSLA", "BUY", 1)
    assert info.value.reason_code is ReasonCode.MISSING_IMPACT_ESTIMATE and "no impact estimate" in str(
        info.value
    )


def test_failing_quote_feed_is_unavailable_not_a_rejection(ledger, clock, quotes):
    broker = make(ledger, clock, quotes)
    quotes.fail = True
    with pytest.raises(BrokerUnavailableError):
        broker.submit_order("q1", "AAPL", "BUY", 1)
    assert broker.get_order_by_client_id("q1") is None  # nothing recorded: safe to resend


def test_client_order_id_is_idempotent(ledger, clock, quotes):
    broker = make(ledger, clock, quotes)
    a = broker.submit_order("same", "AAPL", "BUY", 10)
    b = broker.submit_order("same", "AAPL", "BUY", 10)
    c = broker.submit_order("same", "MSFT", "SELL", 99)  # whatever is asked, the id is taken
    assert a == b == c
    assert len(broker.list_orders()) == 1
    assert broker.get_positions()["AAPL"].qty == 10


def test_restart_keeps_orders_positions_and_continues_work(url, clock, quotes):
    first = LedgerStore.open(url)
    broker = make(first, clock, quotes, max_participation_per_tick=0.01, starting_cash=50_000)
    broker.submit_order("big", "MSFT", "BUY", 120)
    broker.submit_order("small", "AAPL", "BUY", 5)
    cash_before = broker.get_account().cash
    first.dispose()

    second = LedgerStore.open(url)  # a new process on the same ledger
    reborn = make(second, clock, quotes, max_participation_per_tick=0.01, starting_cash=999)
    assert reborn.get_account().cash == pytest.approx(cash_before)  # persisted account wins
    assert reborn.get_order_by_client_id("big").filled_qty == 100
    assert {s: p.qty for s, p in reborn.get_positions().items()} == {"AAPL": 5, "MSFT": 100}
    clock.advance(seconds=5)
    (done,) = reborn.process_tick()
    assert done.client_order_id == "big" and done.status is OrderState.FILLED
    assert reborn.get_positions()["MSFT"].qty == 120
    second.dispose()


def test_stale_quotes_are_not_traded_on(ledger, clock, quotes):
    broker = make(ledger, clock, quotes, max_participation_per_tick=0.01)
    broker.submit_order("big", "MSFT", "BUY", 150)
    quotes.frozen_at = clock.now()
    clock.advance(seconds=31)
    assert broker.process_tick() == []  # quote 31 s old: wait
    quotes.frozen_at = None
    (filled,) = broker.process_tick()
    assert filled.status is OrderState.FILLED and filled.filled_qty == 150


def test_limit_orders_wait_for_their_price(ledger, clock, quotes):
    broker = make(ledger, clock, quotes)
    order = broker.submit_order("lim", "AAPL", "BUY", 10, "LIMIT", 99.0)
    assert order.status is OrderState.ACCEPTED and order.filled_qty == 0
    clock.advance(seconds=1)
    assert broker.process_tick() == []
    quotes.book["AAPL"] = (98.0, 98.02)
    clock.advance(seconds=1)
    (filled,) = broker.process_tick()
    assert filled.status is OrderState.FILLED and filled.avg_fill_price <= 99.0


def test_day_orders_expire_at_the_close(ledger, clock, quotes):
    broker = make(ledger, clock, quotes)
    broker.submit_order("lim", "AAPL", "BUY", 10, "LIMIT", 50.0)
    clock.set(datetime(2024, 3, 5, 21, 0, tzinfo=UTC))  # 16:00 New York
    (expired,) = broker.process_tick()
    assert expired.status is OrderState.EXPIRED and expired.filled_qty == 0


def test_cancel_open_and_refuse_cancel_of_filled(ledger, clock, quotes):
    broker = make(ledger, clock, quotes)
    broker.submit_order("lim", "AAPL", "BUY", 10, "LIMIT", 50.0)
    assert broker.cancel_order("lim").status is OrderState.CANCELLED
    broker.submit_order("mkt", "AAPL", "BUY", 10)
    with pytest.raises(BrokerRejectedError) as info:
        broker.cancel_order("mkt")
    assert info.value.order.status is OrderState.FILLED
    with pytest.raises(BrokerRejectedError):
        broker.cancel_order("ghost")


def test_open_buys_reserve_buying_power(ledger, clock, quotes):
    broker = make(ledger, clock, quotes, starting_cash=10_000)
    broker.submit_order("lim", "AAPL", "BUY", 60, "LIMIT", 90.0)  # reserves 5,400
    assert broker.get_account().buying_power == pytest.approx(10_000 - 5_400)
    with pytest.raises(BrokerRejectedError, match="insufficient buying power"):
        broker.submit_order("mkt", "AAPL", "BUY", 50)  # ~5,000 > 4,600 left


def test_simulated_session_trades_after_a_friday_last_bar(ledger, quotes):
    clock = SimulatedClock.session_after("2024-03-08")  # Monday 2024-03-11, 30 min after open
    quotes.clock = clock
    broker = make(ledger, clock, quotes)
    assert broker.is_market_open(clock.now())
    assert broker.submit_order("demo", "AAPL", "BUY", 1).status is OrderState.FILLED


# --- modes ------------------------------------------------------------------------------------


class SpyBroker:
    mode = BrokerMode.PAPER

    def __init__(self):
        self.calls: list[str] = []

    def submit_order(self, *a, **k):
        self.calls.append("submit_order")
        raise AssertionError("shadow mode must never submit")

    def get_positions(self):
        self.calls.append("get_positions")
        return {}

    def is_market_open(self, now):
        return True


def test_shadow_mode_records_but_never_submits(clock):
    spy = SpyBroker()
    shadow = ShadowBroker(spy, clock)
    order = shadow.submit_order("s1", "AAPL", "BUY", 10)
    assert order.status is OrderState.CANCELLED and order.reject_reason is ReasonCode.SHADOW_MODE
    assert shadow.submit_order("s1", "AAPL", "BUY", 10) is order
    assert shadow.get_order_by_client_id("s1") is order
    assert shadow.get_positions() == {}  # reads pass through
    assert spy.calls == ["get_positions"]


def test_live_is_refused_with_a_clear_error(clock):
    built = []
    with pytest.raises(LiveTradingRefusedError) as info:
        make_broker("live", lambda: built.append(1), clock)
    assert info.value.reason_code is ReasonCode.LIVE_TRADING_REFUSED
    assert "live trading is refused" in str(info.value)
    assert built == []  # refused before any broker was constructed
    with pytest.raises(LiveTradingRefusedError):
        resolve_mode(" Live ")
    with pytest.raises(ValueError):
        resolve_mode("yolo")
    assert resolve_mode("paper") is BrokerMode.PAPER

    class Live(SpyBroker):
        mode = BrokerMode.LIVE

    with pytest.raises(LiveTradingRefusedError):
        ShadowBroker(Live(), clock)
    assert isinstance(make_broker("shadow", SpyBroker, clock), ShadowBroker)
    assert isinstance(make_broker("PAPER", SpyBroker, clock), SpyBroker)


def test_clock_moves_time_for_fills(ledger, clock, quotes):
    broker = make(ledger, clock, quotes, max_participation_per_tick=0.01)
    broker.submit_order("big", "MSFT", "BUY", 200)
    clock.advance(timedelta(minutes=1))
    (o,) = broker.process_tick()
    assert [f.ts for f in o.fills] == [T0, T0 + timedelta(minutes=1)]


def test_carried_fills_give_the_positions_and_cash_of_a_full_scan(ledger, clock, quotes):
    """Issue 12: positions and cash fold only the fills after the last one seen (shared by the
    brokers of one ledger) — equal to folding every fill, also after a fill stamped before the
    ones seen and after a row that disappears (a rolled-back write)."""
    from sqlalchemy import delete, insert, select

    from ais_pipelines.brokers.paper import _CARRIED, OrderSide
    from ais_pipelines.ledger import models as m
    from ais_pipelines.ledger.store import apply_fill_to_position

    def full_scan() -> tuple[dict[str, tuple[float, float]], float]:
        with ledger.engine.begin() as conn:
            rows = conn.execute(select(m.paper_fills)).all()
            start = conn.execute(select(m.paper_account.c.starting_cash)).scalar_one()
        book: dict[str, tuple[float, float, float]] = {}
        for f in sorted(rows, key=lambda r: (r.ts, r.fill_id)):
            book[f.symbol] = apply_fill_to_position(*book.get(f.symbol, (0.0, 0.0, 0.0)), f.side, f.qty, f.price,
                                                    f.fees)
        cash = float(start)
        for f in rows:  # table order, as the broker sums
            cash += (-f.qty * f.price if f.side == OrderSide.BUY else f.qty * f.price) - f.fees
        return {s: (q, a) for s, (q, a, _r) in sorted(book.items()) if abs(q) > 1e-9}, cash

    def check(broker: PaperBroker) -> None:
        want_pos, want_cash = full_scan()
        assert {s: (p.qty, p.avg_price) for s, p in broker.get_positions().items()} == want_pos
        assert broker.get_account().cash == want_cash  # exactly: the same additions in the same order

    broker = make(ledger, clock, quotes, fee_bps=3, starting_cash=1e6)
    for i, (sym, side, qty) in enumerate([("AAPL", "BUY", 300), ("MSFT", "BUY", 70), ("AAPL", "SELL", 120),
                                          ("MSFT", "SELL", 70), ("AAPL", "BUY", 33)]):
        clock.advance(seconds=30)
        broker.submit_order(f"c{i}", sym, side, qty)
        check(broker)
        check(make(ledger, clock, quotes, fee_bps=3, starting_cash=1e6))  # another broker, same ledger
    assert ledger.engine in _CARRIED
    with ledger.engine.begin() as conn:  # a fill stamped before every fill seen
        order = conn.execute(select(m.paper_orders.c.broker_order_id)).first()[0]
        conn.execute(insert(m.paper_fills).values(fill_id="early", broker_order_id=order, symbol="AAPL",
                                                  side="BUY", qty=5.0, price=98.5, fees=0.1, ts=T0))
    check(broker)
    with ledger.engine.begin() as conn:  # a row seen before is gone
        conn.execute(delete(m.paper_fills).where(m.paper_fills.c.fill_id == "early"))
    check(broker)
