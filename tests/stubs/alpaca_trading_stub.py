"""An in-memory Alpaca paper trading API on ``StubHTTPServer``, in Alpaca's real wire format.

Endpoints (all need ``APCA-API-KEY-ID``/``APCA-API-SECRET-KEY``; 401 with Alpaca's body otherwise):

* ``POST /v2/orders`` → 200 with the order. Refusals as Alpaca words them: duplicate
  ``client_order_id`` → 422 ``{"code": 40010001, "message": "client_order_id must be unique"}``;
  bad fields → 422 ``40010001``; unknown asset → 422; crypto with a ``time_in_force`` other than
  gtc/ioc → 422 ``42210000``; not enough cash → 403 ``{"code": 40310000, "message":
  "insufficient buying power", "buying_power", "cost_basis"}``; selling more than held → 403.
* ``GET /v2/orders?status=open|closed|all&limit&direction&after&until&symbols&side``,
  ``GET /v2/orders/{id}``, ``GET /v2/orders:by_client_order_id?client_order_id=`` (404
  ``40410000`` when unknown), ``DELETE /v2/orders/{id}`` → 204 (422 "order is not cancelable"
  for a closed order).
* ``GET /v2/positions`` (crypto symbols without the slash, ``BTCUSD``, as Alpaca sends them),
  ``GET /v2/account``, ``GET /v2/clock`` (from the XNYS calendar at the stub's clock, times in
  New York with offset), ``GET /v2/account/activities/FILL`` (``after``, ``direction``,
  ``page_size``, ``page_token``, ``order_id``).

Scripting: ``fill(order, qty=None, price=None)`` executes (part of) an order and records a FILL
activity; ``set_status``/``reject``/``expire``/``confirm_cancel`` move orders; ``ack_status``
(default ``new``) is the status a fresh order is answered with; ``cancel_status`` (``canceled``
or ``pending_cancel``) what a cancel does; ``hide_fills`` keeps executions out of the activity
feed (a lagging feed); ``lose_next_submit_response(seconds)`` creates the order and then holds
the answer (the client times out after the broker acted). Transport failures go through the
underlying server (``stub.server.fail``/``script``/``hang``). ``created`` lists the ids of
every order the stub created.
"""

from __future__ import annotations

import threading
import uuid
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd

from ais_pipelines.core.calendars import get_calendar
from ais_pipelines.core.clock import Clock, FixedClock
from tests.stubs.http_stub import RecordedRequest, StubHTTPServer, StubResponse

UNAUTHORIZED = {"code": 40110000, "message": "request is not authorized"}
NOT_UNIQUE = {"code": 40010001, "message": "client_order_id must be unique"}
CLOSED_STATUSES = frozenset({"filled", "canceled", "expired", "rejected", "replaced"})
CRYPTO_QUOTES = ("USD", "USDT", "USDC", "BTC")
NY = ZoneInfo("America/New_York")
_EPS = 1e-9


def rfc3339(ts: datetime) -> str:
    """Alpaca's order timestamps: UTC, microseconds, ``Z``."""
    return ts.astimezone(ZoneInfo("UTC")).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _num(x: float) -> str:
    """Alpaca sends decimals as strings; whole numbers without a fraction."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _error(status: int, code: int, message: str, **extra: Any) -> StubResponse:
    return StubResponse(status=status, body={"code": code, "message": message, **extra})


class AlpacaTradingStub:
    """Alpaca's paper trading REST API, in memory, on a ``StubHTTPServer``."""

    def __init__(
        self,
        server: StubHTTPServer | None = None,
        *,
        clock: Clock | None = None,
        api_key: str = "stub-key",
        secret_key: str = "stub-secret",
        cash: float = 100_000.0,
        prices: dict[str, float] | None = None,
        ack_status: str = "new",
        cancel_status: str = "canceled",
    ) -> None:
        self.server = server or StubHTTPServer()
        self.clock = clock or FixedClock(datetime(2024, 3, 5, 15, 0, tzinfo=ZoneInfo("UTC")))
        self.api_key, self.secret_key = api_key, secret_key
        self.cash = cash
        # Known assets and their last price (for market orders, buying power and marks).
        self.prices: dict[str, float] = dict(
            prices or {"AAPL": 100.0, "MSFT": 400.0, "BTC/USD": 50_000.0, "ETH/USD": 3_000.0}
        )
        self.ack_status = ack_status
        self.cancel_status = cancel_status
        self.hide_fills = False
        self.orders: dict[str, dict[str, Any]] = {}  # id → Alpaca order JSON, in creation order
        self.activities: list[dict[str, Any]] = []
        self.hidden_activities: list[dict[str, Any]] = []
        self.positions: dict[str, tuple[float, float]] = {}  # symbol → (qty, avg entry price)
        self.created: list[str] = []
        self._lose_submit: list[float] = []
        self._lock = threading.RLock()
        self._seq = 0
        routes = [
            ("POST", "/v2/orders", self._post_order),
            ("GET", "/v2/orders", self._list_orders),
            ("GET", "/v2/orders:by_client_order_id", self._by_client_id),
            ("GET", "/v2/orders/{order_id}", self._get_order),
            ("DELETE", "/v2/orders/{order_id}", self._cancel),
            ("GET", "/v2/positions", self._positions),
            ("GET", "/v2/account", self._account),
            ("GET", "/v2/clock", self._clock),
            ("GET", "/v2/account/activities/{activity_type}", self._activities),
        ]
        for method, pattern, handler in routes:
            self.server.route(method, pattern, self._authed(handler))

    @property
    def base_url(self) -> str:
        return self.server.base_url

    def __enter__(self) -> AlpacaTradingStub:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    # -- scripting --------------------------------------------------------------------------

    def order(self, ref: str) -> dict[str, Any]:
        """An order by Alpaca id or client order id (``KeyError`` if unknown)."""
        with self._lock:
            if ref in self.orders:
                return self.orders[ref]
            for o in self.orders.values():
                if o["client_order_id"] == ref:
                    return o
        raise KeyError(ref)

    def fill(self, ref: str, qty: float | None = None, price: float | None = None) -> dict[str, Any]:
        """Execute ``qty`` (default: all that is left) at ``price`` (default: limit or last price)."""
        with self._lock:
            o = self.order(ref)
            ordered, done = float(o["qty"]), float(o["filled_qty"])
            qty = ordered - done if qty is None else float(qty)
            if qty <= 0 or done + qty > ordered + _EPS:
                raise ValueError(f"cannot fill {qty} of {o['id']}: {done}/{ordered} already filled")
            if price is None:
                price = float(o["limit_price"]) if o["limit_price"] else self.prices[o["symbol"]]
            now = self.clock.now()
            cum = done + qty
            avg = ((float(o["filled_avg_price"] or 0.0) * done) + price * qty) / cum
            full = cum >= ordered - _EPS
            o.update(
                filled_qty=_num(cum),
                filled_avg_price=_num(round(avg, 6)),
                status="filled" if full else "partially_filled",
                updated_at=rfc3339(now),
                filled_at=rfc3339(now) if full else None,
            )
            self._seq += 1
            activity = {
                "activity_type": "FILL",
                "id": f"{now.strftime('%Y%m%d%H%M%S%f')[:17]}::{uuid.UUID(int=self._seq + (1 << 64))}",
                "transaction_time": rfc3339(now),
                "type": "fill" if full else "partial_fill",
                "price": _num(price),
                "qty": _num(qty),
                "side": o["side"],
                "symbol": o["symbol"],
                "leaves_qty": _num(ordered - cum),
                "order_id": o["id"],
                "cum_qty": _num(cum),
                "order_status": o["status"],
            }
            (self.hidden_activities if self.hide_fills else self.activities).append(activity)
            self._book(o["symbol"], o["side"], qty, price)
            return activity

    def publish_hidden_fills(self) -> None:
        """The lagging activity feed catches up."""
        with self._lock:
            self.activities.extend(self.hidden_activities)
            self.hidden_activities.clear()

    def set_status(self, ref: str, status: str, **fields: Any) -> dict[str, Any]:
        """Put an order in any raw Alpaca status (for mapping tests)."""
        with self._lock:
            o = self.order(ref)
            o.update(status=status, updated_at=rfc3339(self.clock.now()), **fields)
            return o

    def reject(self, ref: str) -> dict[str, Any]:
        return self.set_status(ref, "rejected", failed_at=rfc3339(self.clock.now()))

    def expire(self, ref: str) -> dict[str, Any]:
        return self.set_status(ref, "expired", expired_at=rfc3339(self.clock.now()))

    def confirm_cancel(self, ref: str) -> dict[str, Any]:
        return self.set_status(ref, "canceled", canceled_at=rfc3339(self.clock.now()))

    def lose_next_submit_response(self, seconds: float) -> None:
        """The next accepted order is created, then its answer is held for ``seconds``."""
        with self._lock:
            self._lose_submit.append(seconds)

    def submissions(self) -> list[RecordedRequest]:
        return self.server.requests_for("/v2/orders", method="POST")

    # -- internals --------------------------------------------------------------------------

    def _authed(self, handler: Any) -> Any:
        def wrapped(req: RecordedRequest) -> StubResponse | dict[str, Any] | list[Any]:
            if (
                req.headers.get("apca-api-key-id") != self.api_key
                or req.headers.get("apca-api-secret-key") != self.secret_key
            ):
                return StubResponse(status=401, body=UNAUTHORIZED)
            with self._lock:
                return handler(req)

        return wrapped

    @staticmethod
    def _is_crypto(symbol: str) -> bool:
        return "/" in symbol

    def _book(self, symbol: str, side: str, qty: float, price: float) -> None:
        held, avg = self.positions.get(symbol, (0.0, 0.0))
        if side == "buy":
            new = held + qty
            avg = (held * avg + qty * price) / new
            self.cash -= qty * price
        else:
            new = held - qty
            self.cash += qty * price
        if abs(new) <= _EPS:
            self.positions.pop(symbol, None)
        else:
            self.positions[symbol] = (new, avg)

    def _reserved_cash(self) -> float:
        return sum(
            (float(o["qty"]) - float(o["filled_qty"]))
            * (float(o["limit_price"]) if o["limit_price"] else self.prices.get(o["symbol"], 0.0))
            for o in self.orders.values()
            if o["side"] == "buy" and o["status"] not in CLOSED_STATUSES
        )

    def _reserved_qty(self, symbol: str) -> float:
        return sum(
            float(o["qty"]) - float(o["filled_qty"])
            for o in self.orders.values()
            if o["side"] == "sell" and o["symbol"] == symbol and o["status"] not in CLOSED_STATUSES
        )

    def _next_id(self) -> str:
        self._seq += 1
        return str(uuid.UUID(int=self._seq))  # deterministic ids: replays are comparable

    def _expires_at(self, tif: str) -> str | None:
        if tif != "day":
            return None
        minute = pd.Timestamp(self.clock.now()).tz_convert("UTC").floor("min")
        return rfc3339(get_calendar("XNYS").next_close(minute).to_pydatetime())

    def _post_order(self, req: RecordedRequest) -> StubResponse:
        try:
            body = req.json()
            symbol = str(body["symbol"]).upper()
            side = str(body["side"])
            kind = str(body.get("type") or body.get("order_type"))
            tif = str(body["time_in_force"])
            qty = float(body["qty"])
            limit = body.get("limit_price")
            limit_price = None if limit is None else float(limit)
        except (KeyError, TypeError, ValueError) as exc:
            return _error(422, 40010001, f"invalid order request: {exc}")
        cid = str(body.get("client_order_id") or uuid.UUID(int=self._seq + (1 << 96)))
        if len(cid) > 128:
            return _error(422, 40010001, "client_order_id must be no more than 128 characters")
        if any(o["client_order_id"] == cid for o in self.orders.values()):
            return StubResponse(status=422, body=dict(NOT_UNIQUE))
        if side not in ("buy", "sell") or kind not in ("market", "limit"):
            return _error(422, 40010001, f"invalid side {side!r} or type {kind!r}")
        if qty <= 0:
            return _error(422, 40010001, "qty must be > 0")
        if kind == "limit" and (limit_price is None or limit_price <= 0):
            return _error(422, 40010001, "limit_price is required for limit orders")
        if symbol not in self.prices:
            return _error(422, 40010001, f'asset "{symbol}" not found')
        crypto = self._is_crypto(symbol)
        if crypto and tif not in ("gtc", "ioc"):
            return _error(422, 42210000, "invalid crypto time_in_force")
        if tif not in ("day", "gtc", "opg", "cls", "ioc", "fok"):
            return _error(422, 40010001, f"invalid time_in_force {tif!r}")
        px = limit_price if limit_price is not None else self.prices[symbol]
        if side == "buy":
            available = self.cash - self._reserved_cash()
            if qty * px > available + _EPS:
                return _error(
                    403,
                    40310000,
                    "insufficient buying power",
                    buying_power=_num(round(available, 2)),
                    cost_basis=_num(round(qty * px, 2)),
                )
        else:
            free = self.positions.get(symbol, (0.0, 0.0))[0] - self._reserved_qty(symbol)
            if qty > free + _EPS:
                return _error(
                    403,
                    40310000,
                    f"insufficient qty available for order (requested: {_num(qty)}, available: {_num(free)})",
                )
        now = rfc3339(self.clock.now())
        oid = self._next_id()
        order = {
            "id": oid,
            "client_order_id": cid,
            "created_at": now,
            "updated_at": now,
            "submitted_at": now,
            "filled_at": None,
            "expired_at": None,
            "canceled_at": None,
            "failed_at": None,
            "replaced_at": None,
            "replaced_by": None,
            "replaces": None,
            "asset_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"alpaca-asset:{symbol}")),
            "symbol": symbol,
            "asset_class": "crypto" if crypto else "us_equity",
            "notional": None,
            "qty": _num(qty),
            "filled_qty": "0",
            "filled_avg_price": None,
            "order_class": "",
            "order_type": kind,
            "type": kind,
            "side": side,
            "position_intent": f"{side}_to_open" if side == "buy" else f"{side}_to_close",
            "time_in_force": tif,
            "limit_price": None if limit_price is None else _num(limit_price),
            "stop_price": None,
            "status": self.ack_status,
            "extended_hours": False,
            "legs": None,
            "trail_percent": None,
            "trail_price": None,
            "hwm": None,
            "subtag": None,
            "source": None,
            "expires_at": self._expires_at(tif),
        }
        self.orders[oid] = order
        self.created.append(oid)
        hang = self._lose_submit.pop(0) if self._lose_submit else 0.0
        return StubResponse(status=200, body=dict(order), hang_s=hang)

    def _list_orders(self, req: RecordedRequest) -> StubResponse:
        status = req.param("status", "open")
        if status not in ("open", "closed", "all"):
            return _error(422, 40010001, f"invalid status {status!r}")
        limit = int(req.param("limit") or 50)
        if not 1 <= limit <= 500:
            return _error(422, 40010001, "limit must be between 1 and 500")
        after, until = req.param("after"), req.param("until")
        symbols = {s for s in (req.param("symbols") or "").split(",") if s}
        side = req.param("side")
        picked = [
            o
            for o in self.orders.values()
            if (status == "all" or (o["status"] in CLOSED_STATUSES) == (status == "closed"))
            and (after is None or _parse(o["submitted_at"]) > _parse(after))
            and (until is None or _parse(o["submitted_at"]) < _parse(until))
            and (not symbols or o["symbol"] in symbols)
            and (side is None or o["side"] == side)
        ]
        picked.sort(key=lambda o: (o["submitted_at"], o["id"]), reverse=req.param("direction") != "asc")
        return StubResponse(body=[dict(o) for o in picked[:limit]])

    def _by_client_id(self, req: RecordedRequest) -> StubResponse:
        cid = req.param("client_order_id")
        for o in self.orders.values():
            if o["client_order_id"] == cid:
                return StubResponse(body=dict(o))
        return _error(404, 40410000, f"order not found for {cid}")

    def _get_order(self, req: RecordedRequest) -> StubResponse:
        o = self.orders.get(req.path_params["order_id"])
        if o is None:
            return _error(404, 40410000, "order not found")
        return StubResponse(body=dict(o))

    def _cancel(self, req: RecordedRequest) -> StubResponse:
        o = self.orders.get(req.path_params["order_id"])
        if o is None:
            return _error(404, 40410000, "order not found")
        if o["status"] in CLOSED_STATUSES or o["status"] == "pending_cancel":
            return _error(422, 42210000, "order is not cancelable")
        now = rfc3339(self.clock.now())
        o.update(status=self.cancel_status, updated_at=now)
        if self.cancel_status == "canceled":
            o["canceled_at"] = now
        return StubResponse(status=204)

    def _positions(self, req: RecordedRequest) -> StubResponse:
        out = []
        for symbol, (qty, avg) in sorted(self.positions.items()):
            crypto = self._is_crypto(symbol)
            price = self.prices.get(symbol, avg)
            value, cost = qty * price, qty * avg
            out.append(
                {
                    "asset_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"alpaca-asset:{symbol}")),
                    "symbol": symbol.replace("/", "") if crypto else symbol,  # Alpaca: BTCUSD
                    "exchange": "CRYPTO" if crypto else "NASDAQ",
                    "asset_class": "crypto" if crypto else "us_equity",
                    "asset_marginable": not crypto,
                    "qty": _num(qty),  # negative for a short, as Alpaca sends it
                    "avg_entry_price": _num(round(avg, 6)),
                    "side": "long" if qty > 0 else "short",
                    "market_value": _num(round(value, 2)),
                    "cost_basis": _num(round(cost, 2)),
                    "unrealized_pl": _num(round(value - cost, 2)),
                    "unrealized_plpc": _num(round((value - cost) / cost, 6) if cost else 0.0),
                    "unrealized_intraday_pl": _num(round(value - cost, 2)),
                    "unrealized_intraday_plpc": _num(round((value - cost) / cost, 6) if cost else 0.0),
                    "current_price": _num(price),
                    "lastday_price": _num(price),
                    "change_today": "0",
                    "qty_available": _num(qty - self._reserved_qty(symbol)),
                }
            )
        return StubResponse(body=out)

    def _account(self, req: RecordedRequest) -> StubResponse:
        long_value = sum(q * self.prices.get(s, a) for s, (q, a) in self.positions.items() if q > 0)
        short_value = sum(q * self.prices.get(s, a) for s, (q, a) in self.positions.items() if q < 0)
        equity = self.cash + long_value + short_value
        free = self.cash - self._reserved_cash()
        return StubResponse(
            body={
                "id": "9f3c1d2e-0000-4000-8000-00000000a11c",
                "account_number": "PA3STUB00001",
                "status": "ACTIVE",
                "crypto_status": "ACTIVE",
                "currency": "USD",
                "buying_power": _num(round(2 * free, 2)),  # paper accounts are margin accounts
                "regt_buying_power": _num(round(2 * free, 2)),
                "daytrading_buying_power": "0",
                "non_marginable_buying_power": _num(round(free, 2)),
                "options_buying_power": _num(round(free, 2)),
                "cash": _num(round(self.cash, 2)),
                "accrued_fees": "0",
                "pending_transfer_in": "0",
                "portfolio_value": _num(round(equity, 2)),
                "pattern_day_trader": False,
                "trading_blocked": False,
                "transfers_blocked": False,
                "account_blocked": False,
                "created_at": "2024-01-02T15:04:05.123456Z",
                "trade_suspended_by_user": False,
                "multiplier": "2",
                "shorting_enabled": True,
                "equity": _num(round(equity, 2)),
                "last_equity": _num(round(equity, 2)),
                "long_market_value": _num(round(long_value, 2)),
                "short_market_value": _num(round(short_value, 2)),
                "position_market_value": _num(round(long_value - short_value, 2)),
                "initial_margin": "0",
                "maintenance_margin": "0",
                "last_maintenance_margin": "0",
                "sma": "0",
                "daytrade_count": 0,
                "options_approved_level": 0,
                "options_trading_level": 0,
            }
        )

    def _clock(self, req: RecordedRequest) -> StubResponse:
        now = pd.Timestamp(self.clock.now()).tz_convert("UTC")
        minute = now.floor("min")
        cal = get_calendar("XNYS")
        is_open = bool(cal.is_open_on_minute(minute))
        next_open = cal.next_open(minute)
        next_close = cal.next_close(minute)
        return StubResponse(
            body={
                "timestamp": now.tz_convert(NY).isoformat(),
                "is_open": is_open,
                "next_open": next_open.tz_convert(NY).isoformat(),
                "next_close": next_close.tz_convert(NY).isoformat(),
            }
        )

    def _activities(self, req: RecordedRequest) -> StubResponse:
        if req.path_params["activity_type"] != "FILL":
            return _error(422, 40010001, f"invalid activity type: {req.path_params['activity_type']}")
        try:
            page_size = int(req.param("page_size") or 100)
        except ValueError:
            return _error(422, 40010001, "invalid page_size")
        if not 1 <= page_size <= 100:
            return _error(422, 40010001, "page_size must be between 1 and 100")
        after, until, order_id = req.param("after"), req.param("until"), req.param("order_id")
        items = [
            a
            for a in self.activities
            if (after is None or _parse(a["transaction_time"]) > _parse(after))
            and (until is None or _parse(a["transaction_time"]) < _parse(until))
            and (order_id is None or a["order_id"] == order_id)
        ]
        items.sort(key=lambda a: a["id"], reverse=req.param("direction", "desc") != "asc")
        token = req.param("page_token")
        if token:
            ids = [a["id"] for a in items]
            items = items[ids.index(token) + 1 :] if token in ids else []
        return StubResponse(body=[dict(a) for a in items[:page_size]])


def _parse(value: str) -> datetime:
    if len(value) == 10:  # YYYY-MM-DD
        return datetime.fromisoformat(value).replace(tzinfo=ZoneInfo("UTC"))
    return pd.Timestamp(value).tz_convert("UTC").to_pydatetime()


__all__ = ["NOT_UNIQUE", "UNAUTHORIZED", "AlpacaTradingStub", "rfc3339"]
