"""One broker interface (§I4): the embedded paper broker, Alpaca paper, and the shadow wrapper.

Modes: PAPER (orders go to a paper broker), SHADOW (decide and record, never submit — a wrapper
around any broker that forwards reads and swallows writes) and LIVE, which is refused.

Contract every broker keeps:

* ``submit_order`` is idempotent on ``client_order_id``: a second call with an id the broker
  already knows returns that order and creates nothing (this is what makes recovery safe).
* A refusal raises ``BrokerRejectedError`` with a reason code; a broker that cannot be reached
  raises ``BrokerUnavailableError`` (outcome unknown: reconcile by ``client_order_id``).
* Order statuses are ``OrderState`` values, so the OMS maps them through its transition table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol, runtime_checkable

from ais_pipelines.core.clock import Clock
from ais_pipelines.core.order_states import OrderState
from ais_pipelines.core.reason_codes import ReasonCode


class BrokerMode(StrEnum):
    PAPER = "PAPER"
    SHADOW = "SHADOW"
    LIVE = "LIVE"


class OrderSide(StrEnum):
    BUY = "BUY"
    SELL = "SELL"


class OrderType(StrEnum):
    MARKET = "MARKET"
    LIMIT = "LIMIT"


class BrokerError(Exception):
    reason_code: ReasonCode = ReasonCode.BROKER_UNAVAILABLE

    def __init__(self, message: str, reason_code: ReasonCode | None = None):
        if reason_code is not None:
            self.reason_code = ReasonCode(reason_code)
        super().__init__(f"{self.reason_code}: {message}")
        self.detail = message


class BrokerRejectedError(BrokerError):
    """The broker refused the order. ``order`` is the broker's record of it, when it kept one."""

    reason_code = ReasonCode.BROKER_REJECTED

    def __init__(self, message: str, reason_code: ReasonCode | None = None, order: BrokerOrder | None = None):
        super().__init__(message, reason_code)
        self.order = order


class BrokerUnavailableError(BrokerError):
    """Transport failure: whether the broker received the order is unknown."""

    reason_code = ReasonCode.BROKER_UNAVAILABLE


class LiveTradingRefusedError(BrokerError):
    """Live trading is not offered by this system, whatever the configuration says."""

    reason_code = ReasonCode.LIVE_TRADING_REFUSED

    def __init__(self, message: str = "live trading is refused: this system trades paper or shadow only"):
        super().__init__(message)


@dataclass(frozen=True)
class BrokerFill:
    fill_id: str  # unique per broker: the ledger records each fill once
    qty: float
    price: float
    fees: float
    ts: datetime


@dataclass(frozen=True)
class BrokerOrder:
    broker_order_id: str
    client_order_id: str
    symbol: str
    side: OrderSide
    qty: float
    order_type: OrderType
    limit_price: float | None
    status: OrderState
    filled_qty: float
    avg_fill_price: float | None
    created_at: datetime
    updated_at: datetime
    fills: tuple[BrokerFill, ...] = field(default_factory=tuple)
    reject_reason: ReasonCode | None = None
    reject_detail: str | None = None


@dataclass(frozen=True)
class BrokerPosition:
    symbol: str
    qty: float
    avg_price: float


@dataclass(frozen=True)
class BrokerAccount:
    cash: float
    equity: float
    buying_power: float


@runtime_checkable
class Broker(Protocol):
    mode: BrokerMode

    def submit_order(
        self,
        client_order_id: str,
        symbol: str,
        side: OrderSide | str,
        qty: float,
        order_type: OrderType | str = OrderType.MARKET,
        limit_price: float | None = None,
    ) -> BrokerOrder: ...

    def get_order_by_client_id(self, client_order_id: str) -> BrokerOrder | None: ...

    def cancel_order(self, client_order_id: str) -> BrokerOrder: ...

    def list_orders(self, open_only: bool = False) -> list[BrokerOrder]: ...

    def get_positions(self) -> dict[str, BrokerPosition]: ...

    def get_account(self) -> BrokerAccount: ...

    def is_market_open(self, now: datetime) -> bool: ...


def resolve_mode(value: BrokerMode | str) -> BrokerMode:
    """Parse a configured mode; LIVE (or anything unknown) never yields a tradable mode."""
    try:
        mode = BrokerMode(str(value).strip().upper())
    except ValueError as exc:
        raise ValueError(f"unknown broker mode {value!r}; expected PAPER or SHADOW") from exc
    if mode is BrokerMode.LIVE:
        raise LiveTradingRefusedError()
    return mode


def make_broker(mode: BrokerMode | str, paper_factory: Callable[[], Broker], clock: Clock) -> Broker:
    """The broker for a configured mode: paper, shadow around paper, live refused."""
    resolved = resolve_mode(mode)  # LIVE raises before any broker is even built
    inner = paper_factory()
    if getattr(inner, "mode", BrokerMode.PAPER) is BrokerMode.LIVE:
        raise LiveTradingRefusedError("the broker factory produced a live broker")
    return ShadowBroker(inner, clock) if resolved is BrokerMode.SHADOW else inner


class ShadowBroker:
    """Decide and record, never submit: reads go to ``inner``, writes stay here.

    A shadow "order" is answered as CANCELLED with reason SHADOW_MODE (it was not sent and
    never will be) so the ledger closes it; the shadow keeps its own book of them, keyed by
    client order id, so re-submission stays idempotent.
    """

    mode = BrokerMode.SHADOW

    def __init__(self, inner: Broker, clock: Clock):
        if getattr(inner, "mode", BrokerMode.PAPER) is BrokerMode.LIVE:
            raise LiveTradingRefusedError("shadow mode must wrap a paper broker, not a live one")
        self.inner = inner
        self.clock = clock
        self.orders: dict[str, BrokerOrder] = {}

    def submit_order(
        self,
        client_order_id: str,
        symbol: str,
        side: OrderSide | str,
        qty: float,
        order_type: OrderType | str = OrderType.MARKET,
        limit_price: float | None = None,
    ) -> BrokerOrder:
        if client_order_id in self.orders:
            return self.orders[client_order_id]
        ts = self.clock.now()
        order = BrokerOrder(
            broker_order_id=f"shadow-{client_order_id}",
            client_order_id=client_order_id,
            symbol=symbol,
            side=OrderSide(str(side).upper()),
            qty=float(qty),
            order_type=OrderType(str(order_type).upper()),
            limit_price=limit_price,
            status=OrderState.CANCELLED,
            filled_qty=0.0,
            avg_fill_price=None,
            created_at=ts,
            updated_at=ts,
            reject_reason=ReasonCode.SHADOW_MODE,
            reject_detail="shadow mode: recorded, not submitted",
        )
        self.orders[client_order_id] = order
        return order

    def get_order_by_client_id(self, client_order_id: str) -> BrokerOrder | None:
        return self.orders.get(client_order_id)

    def cancel_order(self, client_order_id: str) -> BrokerOrder:
        order = self.orders.get(client_order_id)
        if order is None:
            raise BrokerRejectedError(f"unknown shadow order {client_order_id}")
        return order  # already closed: nothing to cancel

    def list_orders(self, open_only: bool = False) -> list[BrokerOrder]:
        return [] if open_only else list(self.orders.values())

    def get_positions(self) -> dict[str, BrokerPosition]:
        return self.inner.get_positions()

    def get_account(self) -> BrokerAccount:
        return self.inner.get_account()

    def is_market_open(self, now: datetime) -> bool:
        return self.inner.is_market_open(now)
