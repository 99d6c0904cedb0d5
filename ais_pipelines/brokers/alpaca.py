"""Alpaca paper trading behind the ``Broker`` protocol (§I4), through alpaca-py's ``TradingClient``.

Paper only. ``paper=False``, or a ``url_override`` that points at Alpaca's live host, raises
``LiveTradingRefusedError`` before a client is even built, so no request is ever sent.

Orders
    Market or limit orders with our deterministic ``client_order_id``. Stocks and ETFs are sent
    ``time_in_force=day``; crypto as ``gtc`` (Alpaca accepts only gtc/ioc for crypto). Alpaca
    enforces client-order-id uniqueness, which is what makes ``submit_order`` idempotent: when a
    submission is refused (422 "client_order_id must be unique", or any other 4xx rejection) the
    order is looked up by client id, and an existing order is returned instead of an error. The
    adapter never posts a second time.

Symbols
    ``BTC/USD`` (also ``BTC-USD``/``BTCUSD``) is sent as ``BTC/USD``; stocks are upper-cased
    with Yahoo's share-class dash turned into Alpaca's dot (``BRK-B`` → ``BRK.B``). FX and
    futures are refused (``SYMBOL_NOT_ALLOWED``) before any request. Crypto positions, which
    Alpaca reports as ``BTCUSD``, come back as ``BTC/USD``.

Status mapping (``ALPACA_STATUS_MAP``; Alpaca status → ``OrderState``)
    ===========================================================  ==================================
    pending_new, accepted, accepted_for_bidding, pending_review,  SUBMITTED (Alpaca has it, no venue
    held                                                          is working it yet: it may still be
                                                                  rejected, and the transition table
                                                                  has no ACCEPTED → REJECTED)
    new                                                           ACCEPTED (working at the venue)
    partially_filled                                              PARTIALLY_FILLED
    filled                                                        FILLED
    pending_cancel                                                CANCEL_PENDING
    canceled                                                      CANCELLED
    replaced                                                      CANCELLED (we never replace; a
                                                                  replacement made elsewhere is
                                                                  another order; the detail names it)
    expired                                                       EXPIRED
    rejected                                                      REJECTED (reason BROKER_REJECTED)
    done_for_day, pending_replace, stopped, suspended             still open: PARTIALLY_FILLED when
                                                                  something filled, else ACCEPTED
    calculated                                                    FILLED when fully filled, else as
                                                                  the line above
    ===========================================================  ==================================

    A status alpaca-py does not know fails validation and raises ``BrokerError``: an order is
    never moved on a guess.

Fills
    Alpaca's order object carries only cumulative ``filled_qty``/``filled_avg_price``; the
    executions are FILL account activities (``/v2/account/activities/FILL``, one id each, read
    through the same client). Fills with ``cum_qty`` beyond the order snapshot are left for the
    next poll. While the executions seen add up to less than ``filled_qty`` (the activity feed
    lags), a terminal status is reported as PARTIALLY_FILLED so the OMS keeps polling: the
    ledger never closes an order whose fills it has not recorded.

Errors (HTTP → exception)
    * 401, and any 403 that is not a business refusal of a submission: ``AlpacaAuthError`` (a
      permanent ``BrokerError``, reason code BROKER_UNAVAILABLE; fix the keys; not retried).
    * 400/422, and 403 with Alpaca's business code 403xxxxx on a submission (Alpaca answers
      "insufficient buying power" with 403/40310000): ``BrokerRejectedError`` with Alpaca's message.
    * 408/429/5xx, timeouts and connection errors: ``BrokerUnavailableError`` (outcome unknown;
      the OMS leaves the order as it is and settles it by client order id later).
    * alpaca-py's own retry of 429/504 (3 attempts, 3 s sleeps) is switched off and every request
      gets ``timeout_s``: the OMS, not the SDK, decides when to ask again.

Market hours
    ``is_market_open(now)`` reads Alpaca's ``/v2/clock`` (the real exchange clock, §I5) and uses
    ``now`` only to pick a side of the next open/close it reports.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import requests
from alpaca.common.enums import Sort
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import AssetClass as AlpacaAssetClass
from alpaca.trading.enums import OrderSide as AlpacaSide
from alpaca.trading.enums import OrderType as AlpacaOrderType
from alpaca.trading.enums import PositionSide, QueryOrderStatus, TimeInForce
from alpaca.trading.models import Order
from alpaca.trading.requests import GetOrdersRequest, LimitOrderRequest, MarketOrderRequest
from pydantic import AwareDatetime, TypeAdapter, ValidationError

from ais_pipelines.brokers.base import (
    BrokerAccount,
    BrokerError,
    BrokerFill,
    BrokerMode,
    BrokerOrder,
    BrokerPosition,
    BrokerRejectedError,
    BrokerUnavailableError,
    LiveTradingRefusedError,
    OrderSide,
    OrderType,
)
from ais_pipelines.core.asset_classes import AssetClass, classify_symbol
from ais_pipelines.core.clock import Clock, ensure_utc
from ais_pipelines.core.order_states import TERMINAL_STATES, OrderState
from ais_pipelines.core.reason_codes import ReasonCode
from ais_pipelines.market_data.alpaca import to_alpaca_symbol
from ais_pipelines.market_data.base import ProviderRejectedError

LIVE_HOSTS = frozenset({"api.alpaca.markets"})
_EPS = 1e-9
_ORDERS_PAGE = 500  # Alpaca's maximum for GET /v2/orders
_ACTIVITIES_PAGE = 100  # Alpaca's maximum for account activities
_MAX_PAGES = 1_000  # a server that never stops paging is a fault, not a long history
_DATETIME = TypeAdapter(AwareDatetime)  # Alpaca sends nanoseconds, which fromisoformat refuses

S = OrderState
# Statuses whose state depends on how much has filled (see the module docstring).
_BY_FILLS = object()
ALPACA_STATUS_MAP: dict[str, OrderState | object] = {
    "pending_new": S.SUBMITTED,
    "accepted": S.SUBMITTED,
    "accepted_for_bidding": S.SUBMITTED,
    "pending_review": S.SUBMITTED,
    "held": S.SUBMITTED,
    "new": S.ACCEPTED,
    "partially_filled": S.PARTIALLY_FILLED,
    "filled": S.FILLED,
    "pending_cancel": S.CANCEL_PENDING,
    "canceled": S.CANCELLED,
    "replaced": S.CANCELLED,
    "expired": S.EXPIRED,
    "rejected": S.REJECTED,
    "done_for_day": _BY_FILLS,
    "pending_replace": _BY_FILLS,
    "stopped": _BY_FILLS,
    "suspended": _BY_FILLS,
    "calculated": _BY_FILLS,
}
del S

_TRANSIENT_TRANSPORT = (
    requests.exceptions.Timeout,
    requests.exceptions.ConnectionError,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


class AlpacaAuthError(BrokerError):
    """Alpaca refused the credentials (401/403): permanent until the keys are fixed; never retried."""


def map_alpaca_status(status: str, qty: float, filled_qty: float) -> OrderState:
    """Alpaca order status → ``OrderState`` (table in the module docstring)."""
    key = str(getattr(status, "value", status)).lower()
    if key not in ALPACA_STATUS_MAP:
        raise BrokerError(f"unknown Alpaca order status {status!r}: not mapped, order left as it is")
    mapped = ALPACA_STATUS_MAP[key]
    if isinstance(mapped, OrderState):
        return mapped
    if key == "calculated" and qty > 0 and filled_qty >= qty - _EPS:
        return OrderState.FILLED
    return OrderState.PARTIALLY_FILLED if filled_qty > _EPS else OrderState.ACCEPTED


def to_alpaca_order_symbol(symbol: str, asset_class: AssetClass) -> str:
    """Our spelling → Alpaca's for orders; FX and futures raise ``BrokerRejectedError``."""
    if asset_class is AssetClass.FX:
        raise BrokerRejectedError(f"{symbol}: FX is not traded through Alpaca", ReasonCode.SYMBOL_NOT_ALLOWED)
    try:
        return to_alpaca_symbol(symbol, asset_class)  # shared with the market-data adapter
    except ProviderRejectedError as exc:
        raise BrokerRejectedError(str(exc), ReasonCode.SYMBOL_NOT_ALLOWED) from exc


def from_alpaca_symbol(symbol: str, asset_class: str | None) -> str:
    """Alpaca's spelling → ours: crypto always as ``BASE/QUOTE`` (positions say ``BTCUSD``)."""
    if str(getattr(asset_class, "value", asset_class)) == AlpacaAssetClass.CRYPTO.value:
        return to_alpaca_symbol(symbol, AssetClass.CRYPTO)
    return symbol


class _TimeoutSession(requests.Session):
    """alpaca-py sends requests without a timeout; a stalled server would hang the OMS."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__()
        self.timeout_s = timeout_s

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout_s
        return super().request(method, url, *args, **kwargs)


def _bound_client(client: TradingClient, timeout_s: float) -> None:
    # Same surgery as market_data.alpaca._configure (private there, and its session keeps
    # every body): no SDK retries (429/504 would sleep 3 s three times), a timeout on each call.
    for attr in ("_session", "_retry", "_retry_codes"):
        if not hasattr(client, attr):  # alpaca-py internals moved: refuse rather than hang/retry
            raise RuntimeError(f"alpaca-py TradingClient has no {attr}; update brokers/alpaca.py")
    client._retry = 0
    client._retry_codes = []
    client._session = _TimeoutSession(timeout_s)


def _api_body(exc: APIError) -> tuple[int | None, str]:
    """Alpaca's error ``code`` and ``message`` (the raw text when the body is not JSON)."""
    text = str(exc)
    try:
        body = json.loads(text)
    except ValueError:
        return None, text[:500]
    if not isinstance(body, dict):
        return None, text[:500]
    code = body.get("code")
    return (int(code) if isinstance(code, int | str) and str(code).isdigit() else None), str(
        body.get("message") or text
    )[:500]


def _float(value: Any, default: float = 0.0) -> float:
    if value is None or value == "":
        return default
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"non-finite number {value!r}")
    return out


def _ts(value: Any) -> datetime:
    if isinstance(value, datetime):
        return ensure_utc(value)
    return ensure_utc(_DATETIME.validate_python(value))


def _alpaca_time(ts: datetime) -> str:
    return ensure_utc(ts).strftime("%Y-%m-%dT%H:%M:%SZ")


class AlpacaPaperBroker:
    """Alpaca paper trading via alpaca-py; see the module docstring for the rules."""

    mode = BrokerMode.PAPER

    def __init__(
        self,
        api_key: str,
        secret_key: str,
        clock: Clock,
        *,
        url_override: str | None = None,
        paper: bool = True,
        timeout_s: float = 10,
        asset_class_for: Callable[[str], AssetClass] | None = None,
    ) -> None:
        # Refusals first: nothing is built, nothing is sent.
        if not paper:
            raise LiveTradingRefusedError()
        if url_override and (urlsplit(url_override).hostname or "").lower() in LIVE_HOSTS:
            raise LiveTradingRefusedError(f"{url_override} is Alpaca's live API: live trading is refused")
        if not api_key or not secret_key:
            raise ValueError("Alpaca needs both an API key and a secret key")
        self.clock = clock
        self.url_override = url_override.rstrip("/") if url_override else None
        self.timeout_s = timeout_s
        self.asset_class_for = asset_class_for or classify_symbol
        self._client = TradingClient(api_key, secret_key, paper=True, url_override=self.url_override)
        _bound_client(self._client, timeout_s)

    def __repr__(self) -> str:  # never print the keys
        return f"AlpacaPaperBroker(url_override={self.url_override!r})"

    # --- transport ------------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], Any], *, submission: bool = False) -> Any:
        """Run one alpaca-py call; translate every failure into the broker error hierarchy."""
        try:
            return fn()
        except APIError as exc:
            raise self._http_error(what, exc, submission) from exc
        except _TRANSIENT_TRANSPORT as exc:
            raise BrokerUnavailableError(f"Alpaca {what}: {type(exc).__name__}: {exc}") from exc
        except requests.exceptions.RequestException as exc:  # bad URL, unreadable JSON, ...
            raise BrokerError(f"Alpaca {what}: {type(exc).__name__}: {exc}") from exc
        except (ValidationError, ValueError, KeyError, TypeError) as exc:  # alpaca-py could not read it
            raise BrokerError(f"Alpaca {what}: unreadable answer: {exc}") from exc

    @staticmethod
    def _http_error(what: str, exc: APIError, submission: bool) -> BrokerError:
        status = exc.status_code
        code, message = _api_body(exc)
        text = f"Alpaca {what}: HTTP {status}: {message}"
        if status == 403 and submission and code is not None and str(code).startswith("403"):
            return BrokerRejectedError(text)  # business refusal (buying power, PDT, ...)
        if status == 401:
            return AlpacaAuthError(
                f"{text} — Alpaca refused the credentials: check the paper API key and secret (not retried)"
            )
        if status == 403:
            return AlpacaAuthError(
                f"{text} — Alpaca refused access: check the paper keys and the account's permissions "
                "(not retried)"
            )
        if status in (400, 422):
            return BrokerRejectedError(text)
        if status is not None and (status in (408, 425, 429) or status >= 500):
            return BrokerUnavailableError(text)
        return BrokerError(text)

    # --- conversions ----------------------------------------------------------------------------

    def _fills(self, after: datetime, order_id: str | None = None) -> dict[str, list[dict[str, Any]]]:
        """FILL activities since ``after``, grouped by Alpaca order id, oldest first."""
        params: dict[str, Any] = {
            "after": _alpaca_time(after - timedelta(seconds=1)),
            "direction": "asc",
            "page_size": _ACTIVITIES_PAGE,
        }
        if order_id is not None:
            params["order_id"] = order_id  # newer servers filter; we filter again below anyway
        grouped: dict[str, list[dict[str, Any]]] = {}
        seen: set[str] = set()
        for _ in range(_MAX_PAGES):
            page = self._call("fill activities", lambda: self._client.get("/account/activities/FILL", params))
            if not isinstance(page, list):
                raise BrokerError(f"Alpaca fill activities: expected a list, got {type(page).__name__}")
            fresh = [a for a in page if isinstance(a, dict) and str(a.get("id")) not in seen]
            for a in fresh:
                seen.add(str(a.get("id")))
                if a.get("activity_type", "FILL") == "FILL" and a.get("order_id"):
                    grouped.setdefault(str(a["order_id"]), []).append(a)
            if len(page) < _ACTIVITIES_PAGE or not fresh:
                return grouped
            params["page_token"] = str(page[-1].get("id"))
        raise BrokerError("Alpaca fill activities: pagination did not end")

    def _to_broker_order(self, order: Order, activities: Iterable[dict[str, Any]] = ()) -> BrokerOrder:
        try:
            qty = _float(order.qty)
            filled = _float(order.filled_qty)
            fills: list[BrokerFill] = []
            for a in activities:
                cum = a.get("cum_qty")
                if cum is not None and _float(cum) > filled + _EPS:
                    continue  # newer than this order snapshot: the next poll picks it up
                fills.append(
                    BrokerFill(
                        fill_id=str(a["id"]),
                        qty=_float(a["qty"]),
                        price=_float(a["price"]),
                        fees=0.0,  # Alpaca equities/crypto fills carry no per-fill fee field
                        ts=_ts(a["transaction_time"]),
                    )
                )
            status_raw = str(getattr(order.status, "value", order.status))
            state = map_alpaca_status(status_raw, qty, filled)
            seen_qty = sum(f.qty for f in fills)
            if filled > seen_qty + _EPS and state in TERMINAL_STATES:
                # Executions not all visible yet: keep the order open so it is polled again.
                state = OrderState.PARTIALLY_FILLED
            side = OrderSide(str(getattr(order.side, "value", order.side)).upper())
        except BrokerError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BrokerError(f"unreadable Alpaca order {order.client_order_id}: {exc}") from exc
        kind = str(getattr(order.type or order.order_type, "value", order.type or order.order_type))
        detail = None
        if status_raw == "rejected":
            detail = "rejected by Alpaca"
        elif status_raw == "replaced":
            detail = f"replaced by Alpaca order {order.replaced_by}"
        return BrokerOrder(
            broker_order_id=str(order.id),
            client_order_id=order.client_order_id,
            symbol=from_alpaca_symbol(order.symbol or "", order.asset_class),
            side=side,
            qty=qty,
            # We only send market and limit; anything else seen here was placed by hand.
            order_type=OrderType.LIMIT if kind == AlpacaOrderType.LIMIT.value else OrderType.MARKET,
            limit_price=None if order.limit_price is None else _float(order.limit_price),
            status=state,
            filled_qty=filled,
            avg_fill_price=_float(order.filled_avg_price)
            if filled > _EPS and order.filled_avg_price
            else None,
            created_at=_ts(order.created_at),
            updated_at=_ts(order.updated_at or order.created_at),
            fills=tuple(sorted(fills, key=lambda f: (f.ts, f.fill_id))),
            reject_reason=ReasonCode.BROKER_REJECTED if status_raw == "rejected" else None,
            reject_detail=detail,
        )

    def _with_fills(self, order: Order) -> BrokerOrder:
        if _float(order.filled_qty) <= _EPS:
            return self._to_broker_order(order)
        grouped = self._fills(_ts(order.created_at), order_id=str(order.id))
        return self._to_broker_order(order, grouped.get(str(order.id), []))

    def _find(self, client_order_id: str) -> Order | None:
        try:
            return self._call(
                "get order by client id", lambda: self._client.get_order_by_client_id(client_order_id)
            )
        except BrokerError as exc:
            cause = exc.__cause__
            if isinstance(cause, APIError) and cause.status_code == 404:
                return None  # Alpaca has never heard of it
            raise

    # --- the Broker protocol ------------------------------------------------------------------

    def submit_order(
        self,
        client_order_id: str,
        symbol: str,
        side: OrderSide | str,
        qty: float,
        order_type: OrderType | str = OrderType.MARKET,
        limit_price: float | None = None,
    ) -> BrokerOrder:
        # Refuse what Alpaca would refuse anyway, without a request.
        try:
            side_v, type_v = OrderSide(str(side).upper()), OrderType(str(order_type).upper())
        except ValueError as exc:
            raise BrokerRejectedError(f"invalid side {side!r} or order type {order_type!r}") from exc
        try:
            qty_f = float(qty)
        except (TypeError, ValueError) as exc:
            raise BrokerRejectedError(f"quantity must be a number, got {qty!r}") from exc
        if not math.isfinite(qty_f) or qty_f <= 0:
            raise BrokerRejectedError(f"quantity must be positive, got {qty!r}")
        if type_v is OrderType.LIMIT and (
            limit_price is None or not math.isfinite(float(limit_price)) or float(limit_price) <= 0
        ):
            raise BrokerRejectedError(f"limit order needs a positive limit price, got {limit_price!r}")
        asset_class = self.asset_class_for(symbol)
        alpaca_symbol = to_alpaca_order_symbol(symbol, asset_class)
        common: dict[str, Any] = {
            "symbol": alpaca_symbol,
            "qty": qty_f,
            "side": AlpacaSide.BUY if side_v is OrderSide.BUY else AlpacaSide.SELL,
            # crypto accepts gtc/ioc only; equities trade day orders (expire at the close)
            "time_in_force": TimeInForce.GTC if asset_class is AssetClass.CRYPTO else TimeInForce.DAY,
            "client_order_id": client_order_id,
        }
        request = (
            LimitOrderRequest(limit_price=float(limit_price), **common)  # type: ignore[arg-type]
            if type_v is OrderType.LIMIT
            else MarketOrderRequest(**common)
        )
        try:
            order = self._call("submit order", lambda: self._client.submit_order(request), submission=True)
        except BrokerRejectedError:
            # A refusal may be "client_order_id must be unique": the order exists, return it.
            existing = self._find(client_order_id)
            if existing is None:
                raise
            found = self._with_fills(existing)
            if existing.symbol != alpaca_symbol or found.side is not side_v or abs(found.qty - qty_f) > _EPS:
                # Same id, other intent: adopting it would book someone else's order as ours.
                raise BrokerError(
                    f"client_order_id {client_order_id} already names another Alpaca order "
                    f"({found.side} {found.qty} {existing.symbol}); not adopted"
                ) from None
            return found
        return self._with_fills(order)

    def get_order_by_client_id(self, client_order_id: str) -> BrokerOrder | None:
        order = self._find(client_order_id)
        return None if order is None else self._with_fills(order)

    def cancel_order(self, client_order_id: str) -> BrokerOrder:
        order = self._find(client_order_id)
        if order is None:
            raise BrokerRejectedError(f"unknown order {client_order_id}")
        current = self._with_fills(order)
        if current.status in TERMINAL_STATES:
            raise BrokerRejectedError(
                f"order {client_order_id} is {current.status}: nothing to cancel", order=current
            )
        try:
            self._call("cancel order", lambda: self._client.cancel_order_by_id(order.id))
        except BrokerRejectedError as exc:  # 422 "order is not cancelable": it filled or closed first
            latest = self.get_order_by_client_id(client_order_id)
            raise BrokerRejectedError(exc.detail, order=latest) from exc
        latest = self.get_order_by_client_id(client_order_id)
        if latest is None:
            raise BrokerError(f"order {client_order_id} vanished at Alpaca after a cancel")
        return latest

    def list_orders(self, open_only: bool = False) -> list[BrokerOrder]:
        status = QueryOrderStatus.OPEN if open_only else QueryOrderStatus.ALL
        orders: dict[str, Order] = {}
        after: datetime | None = None
        for _ in range(_MAX_PAGES):
            req = GetOrdersRequest(status=status, limit=_ORDERS_PAGE, direction=Sort.ASC, after=after)
            page: list[Order] = self._call("list orders", lambda r=req: self._client.get_orders(r))
            fresh = [o for o in page if str(o.id) not in orders]
            orders.update((str(o.id), o) for o in fresh)
            if len(page) < _ORDERS_PAGE or not fresh:
                break
            # ``after`` is by submission time; step back a microsecond so ties are not skipped
            after = max(_ts(o.submitted_at) for o in page) - timedelta(microseconds=1)
        filled = [o for o in orders.values() if _float(o.filled_qty) > _EPS]
        grouped = self._fills(min(_ts(o.created_at) for o in filled)) if filled else {}
        out = [self._to_broker_order(o, grouped.get(str(o.id), [])) for o in orders.values()]
        return sorted(out, key=lambda o: (o.created_at, o.broker_order_id))

    def get_positions(self) -> dict[str, BrokerPosition]:
        positions = self._call("positions", self._client.get_all_positions)
        out: dict[str, BrokerPosition] = {}
        try:
            for p in positions:
                qty = abs(_float(p.qty))
                if p.side == PositionSide.SHORT:
                    qty = -qty
                symbol = from_alpaca_symbol(p.symbol, p.asset_class)
                out[symbol] = BrokerPosition(symbol, qty, _float(p.avg_entry_price))
        except (ValueError, TypeError) as exc:
            raise BrokerError(f"unreadable Alpaca position: {exc}") from exc
        return dict(sorted(out.items()))

    def get_account(self) -> BrokerAccount:
        account = self._call("account", self._client.get_account)
        try:
            cash = _float(account.cash)
            equity = _float(account.equity, default=cash)
            # The mandate is unlevered (long-only, §F1): offer cash buying power, never margin.
            buying_power = _float(account.non_marginable_buying_power, default=cash)
        except (ValueError, TypeError) as exc:
            raise BrokerError(f"unreadable Alpaca account: {exc}") from exc
        return BrokerAccount(cash=cash, equity=equity, buying_power=buying_power)

    def is_market_open(self, now: datetime) -> bool:
        clk = self._call("clock", self._client.get_clock)
        now = ensure_utc(now)
        next_open, next_close = _ts(clk.next_open), _ts(clk.next_close)
        if clk.is_open:
            return now < next_close
        return next_open <= now < next_close


__all__ = [
    "ALPACA_STATUS_MAP",
    "LIVE_HOSTS",
    "AlpacaAuthError",
    "AlpacaPaperBroker",
    "from_alpaca_symbol",
    "map_alpaca_status",
    "to_alpaca_order_symbol",
]
