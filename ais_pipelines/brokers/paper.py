"""The embedded paper broker (§I4): market hours, quotes, impact-priced and partial fills.

* Market hours come from ``exchange_calendars`` (``core.calendars.is_open_at``) evaluated on the
  injected clock, so the demo's simulated session trades on a Saturday night too (§I5).
* Quotes come from a quote source ``(symbol, now) -> (bid, ask, ts) | None``; ``None`` (or a
  ``KeyError``) means the symbol is unknown. A quote older than ``max_quote_age_s`` is not
  traded on: the order waits for a fresh one.
* Fill price = mid ± the §H1 impact estimate (``core.impact.impact_estimate``: temporary +
  permanent + half spread, after the regime multiplier) for the slice being filled. An order larger than
  ``max_participation_per_tick × ADV`` fills in slices: one slice now, the rest on later
  ``process_tick`` calls. Day orders expire at the session close.
* Rejections: unknown symbol, market closed, non-positive quantity, missing impact inputs
  (no ADV), insufficient buying power, selling more than is held (no shorting by default).
* State lives in the ledger database (``paper_*`` tables), so a restart keeps orders, fills
  and positions; ``submit_order`` is idempotent on ``client_order_id``.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

import pandas as pd
from sqlalchemy import Connection, Engine, func, insert, select, text, update

from ais_pipelines.brokers.base import (
    BrokerAccount,
    BrokerFill,
    BrokerMode,
    BrokerOrder,
    BrokerPosition,
    BrokerRejectedError,
    BrokerUnavailableError,
    OrderSide,
    OrderType,
)
from ais_pipelines.core.asset_classes import classify_symbol
from ais_pipelines.core.calendars import calendar_name, is_open_at, session_table
from ais_pipelines.core.clock import Clock, ensure_utc
from ais_pipelines.core.impact import impact_estimate
from ais_pipelines.core.order_states import OPEN_STATES, OrderState
from ais_pipelines.core.reason_codes import ReasonCode
from ais_pipelines.ledger import models as m
from ais_pipelines.ledger.store import LedgerStore, _serialize, apply_fill_to_position

_EPS = 1e-9


class Quote(NamedTuple):
    bid: float
    ask: float
    ts: datetime


QuoteSource = Callable[[str, datetime], Quote | tuple[float, float, datetime] | None]


@dataclass(frozen=True)
class PaperBrokerConfig:
    starting_cash: float = 100_000.0
    # Share of ADV one tick may fill; orders above it are worked over several ticks.
    max_participation_per_tick: float = 0.01
    max_quote_age_s: float = 30.0
    fee_bps: float = 0.0
    default_sigma: float = 0.02  # daily volatility used when no σ is known for the symbol
    regime: str = "NORMAL"  # §H1 regime multiplier of the impact model (VOLATILE/CRISIS cost more)
    allow_short: bool = False  # the mandate is long-only (§F1)
    account_id: str = "paper"


def _lookup(source: Callable[[str], float | None] | Mapping[str, float] | None, symbol: str) -> float | None:
    if source is None:
        return None
    value = source.get(symbol) if isinstance(source, Mapping) else source(symbol)
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) and value > 0 else None


def _paper_order_id(client_order_id: str) -> str:
    # Deterministic, so a replay of the same decisions produces the same ids (§L1).
    return "paper-" + hashlib.sha256(client_order_id.encode()).hexdigest()[:24]


@dataclass
class _CarriedFills:
    """The paper fills seen so far (SQLite: table order = rowid order), folded into the book
    (in ``(ts, fill_id)`` order, as ``_positions`` applies them) and into cash (in table order,
    as ``_cash`` sums them): a long replay's broker holds every fill it ever made, and every
    position or account read scanned them all. ``mark``: count and totals of the rows seen."""

    last_rowid: int = 0
    mark: tuple[Any, ...] = (0, 0.0, 0.0, 0.0)
    key: tuple[Any, str] | None = None
    book: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    flows: list[float] = field(default_factory=list)  # each fill's cash flow, in table order
    cash_of: dict[float, tuple[int, float]] = field(default_factory=dict)  # start → (flows summed, cash)

    def cash(self, start: float) -> float:
        n, cash = self.cash_of.get(start, (0, start))
        for flow in self.flows[n:]:  # the same additions, in the same order, as the full scan
            cash += flow
        self.cash_of[start] = (len(self.flows), cash)
        return cash


_CARRIED: weakref.WeakKeyDictionary[Engine, _CarriedFills] = weakref.WeakKeyDictionary()


def _fill_marks(conn: Connection, upto: int) -> tuple[Any, ...]:
    f = m.paper_fills.c
    row = conn.execute(select(func.count(), func.total(f.qty), func.total(f.price), func.total(f.fees))
                       .where(text("rowid <= :r").bindparams(r=upto))).one()
    return tuple(row)


def _carried_fills(conn: Connection, engine: Engine) -> _CarriedFills | None:
    """The carried fills brought up to date, or ``None`` (not SQLite: the full scans decide).

    Only rows after the last one seen are read; the rows seen must still be there unchanged
    (same count and totals) and the new ones must sort after them in ``(ts, fill_id)``,
    else everything is folded afresh."""
    if conn.dialect.name != "sqlite":
        return None
    c = _CARRIED.get(engine)
    if c is not None and _fill_marks(conn, c.last_rowid) != c.mark:
        c = None
    if c is None:
        c = _CarriedFills()
    new = conn.execute(select(text("rowid AS _rowid"), m.paper_fills)
                       .where(text("rowid > :r").bindparams(r=c.last_rowid)).order_by(text("rowid"))).all()
    if new and c.key is not None and min((r.ts, r.fill_id) for r in new) <= c.key:
        c, new = _CarriedFills(), conn.execute(select(text("rowid AS _rowid"), m.paper_fills)
                                               .order_by(text("rowid"))).all()
    for r in sorted(new, key=lambda r: (r.ts, r.fill_id)):
        qty, avg, realized = c.book.get(r.symbol, (0.0, 0.0, 0.0))
        c.book[r.symbol] = apply_fill_to_position(qty, avg, realized, r.side, r.qty, r.price, r.fees)
        c.key = (r.ts, r.fill_id)
    for r in new:
        notional = r.qty * r.price
        c.flows.append((-notional if r.side == OrderSide.BUY else notional) - r.fees)
    if new:
        c.last_rowid = int(new[-1]._rowid)
        c.mark = _fill_marks(conn, c.last_rowid)
    with contextlib.suppress(TypeError):
        _CARRIED[engine] = c
    return c


class PaperBroker:
    """The embedded paper broker; see the module docstring for its rules."""

    mode = BrokerMode.PAPER

    def __init__(
        self,
        ledger: LedgerStore | Engine,
        clock: Clock,
        quote_source: QuoteSource,
        *,
        adv: Callable[[str], float | None] | Mapping[str, float],
        sigma: Callable[[str], float | None] | Mapping[str, float] | None = None,
        calendar_for: Callable[[str], str] | None = None,
        config: PaperBrokerConfig | None = None,
        default_calendar: str = "XNYS",
    ):
        self.engine = ledger.engine if isinstance(ledger, LedgerStore) else ledger
        self.clock = clock
        self.quote_source = quote_source
        self.adv = adv
        self.sigma = sigma
        self.calendar_for = calendar_for or (lambda s: calendar_name(classify_symbol(s)))
        self.config = config or PaperBrokerConfig()
        self.default_calendar = default_calendar
        self._ensure_account()

    # --- helpers ----------------------------------------------------------------------------

    def _ensure_account(self) -> None:
        with self.engine.begin() as conn:
            # Two processes opening the broker at once must not both insert (PostgreSQL: a
            # unique violation; SQLite's BEGIN IMMEDIATE already serialises).
            _serialize(conn, "ais-paper-account")
            row = conn.execute(
                select(m.paper_account).where(m.paper_account.c.account_id == self.config.account_id)
            ).first()
            if row is None:  # an existing account keeps its persisted starting cash
                conn.execute(
                    insert(m.paper_account).values(
                        account_id=self.config.account_id,
                        starting_cash=self.config.starting_cash,
                        created_at=self.clock.now(),
                    )
                )

    def _quote(self, symbol: str, now: datetime) -> Quote | None:
        try:
            raw = self.quote_source(symbol, now)
        except KeyError:
            return None
        except Exception as exc:  # a failing feed is not "unknown symbol": the outcome is unknown
            raise BrokerUnavailableError(f"quote source failed for {symbol}: {exc}") from exc
        if raw is None:
            return None
        bid, ask, ts = raw
        bid, ask = float(bid), float(ask)
        if not (math.isfinite(bid) and math.isfinite(ask)) or bid <= 0 or ask < bid:
            raise BrokerUnavailableError(f"unusable quote for {symbol}: bid={bid} ask={ask}")
        return Quote(bid, ask, ensure_utc(ts))

    def _fresh(self, quote: Quote, now: datetime) -> bool:
        return abs((now - quote.ts).total_seconds()) <= self.config.max_quote_age_s

    def _open_for(self, symbol: str, now: datetime) -> bool:
        return is_open_at(self.calendar_for(symbol), pd.Timestamp(now))

    def _session_close(self, symbol: str, now: datetime) -> datetime | None:
        try:
            close = session_table(self.calendar_for(symbol)).session_close_at(pd.Timestamp(now))
        except ValueError:
            return None
        return None if close is None else close.to_pydatetime()

    def _impact_bps(self, symbol: str, quote: Quote, qty: float) -> float | None:
        """§H1 total impact in bps for ``qty`` of ``symbol`` at this quote; ``None`` if not computable."""
        mid = (quote.bid + quote.ask) / 2.0
        est = impact_estimate(
            qty=qty,
            price=mid,
            adv_shares=_lookup(self.adv, symbol) or float("nan"),
            sigma_daily=_lookup(self.sigma, symbol) or self.config.default_sigma,
            spread_bps=(quote.ask - quote.bid) / mid * 1e4,
            regime=self.config.regime,
        )
        return float(est["total_bps"]) if est["valid"] else None

    def _fill_price(self, side: str, quote: Quote, bps: float) -> float:
        mid = (quote.bid + quote.ask) / 2.0
        sign = 1.0 if side == OrderSide.BUY else -1.0
        return mid * (1.0 + sign * bps / 1e4)

    def _slice(self, order: Any, adv: float) -> float:
        remaining = order.qty - order.filled_qty
        cap = self.config.max_participation_per_tick * adv
        chunk = min(remaining, cap)
        if float(order.qty).is_integer():  # whole-share orders fill in whole shares
            chunk = min(remaining, max(1.0, math.floor(chunk)))
        return chunk

    def _to_broker_order(self, conn: Connection, row: Any, fills: Sequence[Any] | None = None) -> BrokerOrder:
        if fills is None:
            fills = conn.execute(
                select(m.paper_fills)
                .where(m.paper_fills.c.broker_order_id == row.broker_order_id)
                .order_by(m.paper_fills.c.fill_id)
            ).all()
        return BrokerOrder(
            broker_order_id=row.broker_order_id,
            client_order_id=row.client_order_id,
            symbol=row.symbol,
            side=OrderSide(row.side),
            qty=row.qty,
            order_type=OrderType(row.order_type),
            limit_price=row.limit_price,
            status=OrderState(row.status),
            filled_qty=row.filled_qty,
            avg_fill_price=row.avg_fill_price,
            created_at=row.created_at,
            updated_at=row.updated_at,
            fills=tuple(BrokerFill(f.fill_id, f.qty, f.price, f.fees, f.ts) for f in fills),
            reject_reason=ReasonCode(row.reject_reason) if row.reject_reason else None,
            reject_detail=row.reject_detail,
        )

    def _row(self, conn: Connection, client_order_id: str, lock: bool = False) -> Any:
        q = select(m.paper_orders).where(m.paper_orders.c.client_order_id == client_order_id)
        return conn.execute(q.with_for_update() if lock else q).first()

    def _positions(self, conn: Connection) -> dict[str, BrokerPosition]:
        carried = _carried_fills(conn, self.engine)
        if carried is not None:
            book = carried.book
        else:
            book = {}
            for f in conn.execute(select(m.paper_fills).order_by(m.paper_fills.c.ts, m.paper_fills.c.fill_id)):
                qty, avg, realized = book.get(f.symbol, (0.0, 0.0, 0.0))
                book[f.symbol] = apply_fill_to_position(qty, avg, realized, f.side, f.qty, f.price, f.fees)
        return {s: BrokerPosition(s, q, a) for s, (q, a, _r) in sorted(book.items()) if abs(q) > _EPS}

    def _cash(self, conn: Connection) -> float:
        start = conn.execute(
            select(m.paper_account.c.starting_cash).where(
                m.paper_account.c.account_id == self.config.account_id
            )
        ).scalar_one()
        carried = _carried_fills(conn, self.engine)
        if carried is not None:
            return carried.cash(float(start))
        cash = float(start)
        for f in conn.execute(select(m.paper_fills)):
            notional = f.qty * f.price
            cash += (-notional if f.side == OrderSide.BUY else notional) - f.fees
        return cash

    def _open_rows(self, conn: Connection) -> list[Any]:
        return conn.execute(
            select(m.paper_orders)
            .where(m.paper_orders.c.status.in_([str(s) for s in OPEN_STATES]))
            .order_by(m.paper_orders.c.created_at, m.paper_orders.c.broker_order_id)
        ).all()

    def _reserved_cash(self, conn: Connection, now: datetime) -> float:
        """Cash already promised to the unfilled part of open buy orders."""
        total = 0.0
        for r in self._open_rows(conn):
            if r.side != OrderSide.BUY:
                continue
            px = r.limit_price
            if px is None:
                q = self._quote(r.symbol, now)
                px = q.ask if q else (r.avg_fill_price or 0.0)
            total += (r.qty - r.filled_qty) * px
        return total

    def _reserved_shares(self, conn: Connection, symbol: str) -> float:
        return sum(
            r.qty - r.filled_qty
            for r in self._open_rows(conn)
            if r.side == OrderSide.SELL and r.symbol == symbol
        )

    # --- the Broker protocol ----------------------------------------------------------------

    def is_market_open(self, now: datetime) -> bool:
        return is_open_at(self.default_calendar, pd.Timestamp(ensure_utc(now)))

    def submit_order(
        self,
        client_order_id: str,
        symbol: str,
        side: OrderSide | str,
        qty: float,
        order_type: OrderType | str = OrderType.MARKET,
        limit_price: float | None = None,
    ) -> BrokerOrder:
        now = self.clock.now()
        with self.engine.begin() as conn:
            existing = self._row(conn, client_order_id)
            if existing is not None:  # idempotent on client_order_id: never a second order
                return self._to_broker_order(conn, existing)
            try:
                side_v, type_v = OrderSide(str(side).upper()), OrderType(str(order_type).upper())
            except ValueError:
                side_v, type_v = OrderSide.BUY, OrderType.MARKET
                rejection: tuple[ReasonCode, str] | None = (
                    ReasonCode.BROKER_REJECTED,
                    f"invalid side {side!r} or order type {order_type!r}",
                )
            else:
                rejection = self._validate(conn, symbol, side_v, qty, type_v, limit_price, now)
            status = OrderState.REJECTED if rejection else OrderState.ACCEPTED
            conn.execute(
                insert(m.paper_orders).values(
                    broker_order_id=_paper_order_id(client_order_id),
                    client_order_id=client_order_id,
                    symbol=symbol,
                    side=str(side_v),
                    qty=float(qty) if _finite(qty) else 0.0,
                    order_type=str(type_v),
                    limit_price=limit_price,
                    status=str(status),
                    filled_qty=0.0,
                    avg_fill_price=None,
                    reject_reason=str(rejection[0]) if rejection else None,
                    reject_detail=rejection[1] if rejection else None,
                    created_at=now,
                    updated_at=now,
                    expires_at=None if rejection else self._session_close(symbol, now),
                )
            )
            if not rejection:
                self._work(conn, self._row(conn, client_order_id, lock=True), now)
            order = self._to_broker_order(conn, self._row(conn, client_order_id))
        if rejection:
            raise BrokerRejectedError(rejection[1], rejection[0], order=order)
        return order

    def _validate(
        self,
        conn: Connection,
        symbol: str,
        side: OrderSide,
        qty: float,
        order_type: OrderType,
        limit_price: float | None,
        now: datetime,
    ) -> tuple[ReasonCode, str] | None:
        """The first reason to refuse the order, or ``None``."""
        if not _finite(qty) or qty <= 0:
            return ReasonCode.BROKER_REJECTED, f"quantity must be positive, got {qty!r}"
        if order_type is OrderType.LIMIT and (
            limit_price is None or not _finite(limit_price) or limit_price <= 0
        ):
            return (
                ReasonCode.BROKER_REJECTED,
                f"limit order needs a positive limit price, got {limit_price!r}",
            )
        quote = self._quote(symbol, now)
        if quote is None:
            return ReasonCode.UNKNOWN_SYMBOL, f"no quotes for {symbol}"
        if not self._open_for(symbol, now):
            return ReasonCode.MARKET_CLOSED, f"market for {symbol} is closed at {now.isoformat()}"
        bps = self._impact_bps(symbol, quote, qty)
        if bps is None:  # §H1: every order carries an impact estimate or is rejected
            return ReasonCode.MISSING_IMPACT_ESTIMATE, f"no impact estimate for {symbol} (ADV unknown?)"
        if side is OrderSide.BUY:
            est = qty * self._fill_price(side, quote, bps)
            if limit_price is not None:
                est = min(est, qty * limit_price)
            est *= 1 + self.config.fee_bps / 1e4
            available = self._cash(conn) - self._reserved_cash(conn, now)
            if est > available + _EPS:
                return ReasonCode.BROKER_REJECTED, (
                    f"insufficient buying power: needs {est:.2f}, available {available:.2f}"
                )
        elif not self.config.allow_short:
            held = self._positions(conn).get(symbol)
            free = (held.qty if held else 0.0) - self._reserved_shares(conn, symbol)
            if qty > free + _EPS:
                return ReasonCode.BROKER_REJECTED, (
                    f"insufficient position: selling {qty} {symbol} with {free} free (no short selling)"
                )
        return None

    def _work(self, conn: Connection, row: Any, now: datetime) -> bool:
        """Expire or fill one slice of an open order. Returns whether the order changed."""
        if row.expires_at is not None and now >= row.expires_at:
            conn.execute(
                update(m.paper_orders)
                .where(m.paper_orders.c.broker_order_id == row.broker_order_id)
                .values(status=str(OrderState.EXPIRED), updated_at=now)
            )
            return True
        if not self._open_for(row.symbol, now):
            return False
        quote = self._quote(row.symbol, now)
        adv = _lookup(self.adv, row.symbol)
        if quote is None or adv is None or not self._fresh(quote, now):
            return False  # no fresh price: wait for a later tick rather than fill at a stale one
        chunk = self._slice(row, adv)
        bps = self._impact_bps(row.symbol, quote, chunk) if chunk > _EPS else None
        if bps is None:
            return False
        price = self._fill_price(row.side, quote, bps)
        if row.limit_price is not None and (
            (row.side == OrderSide.BUY and price > row.limit_price)
            or (row.side == OrderSide.SELL and price < row.limit_price)
        ):
            return False
        n = len(
            conn.execute(
                select(m.paper_fills.c.fill_id).where(m.paper_fills.c.broker_order_id == row.broker_order_id)
            ).all()
        )
        fees = chunk * price * self.config.fee_bps / 1e4
        conn.execute(
            insert(m.paper_fills).values(
                fill_id=f"{row.broker_order_id}-F{n + 1:04d}",
                broker_order_id=row.broker_order_id,
                symbol=row.symbol,
                side=row.side,
                qty=chunk,
                price=price,
                fees=fees,
                ts=now,
            )
        )
        filled = row.filled_qty + chunk
        avg = ((row.avg_fill_price or 0.0) * row.filled_qty + price * chunk) / filled
        done = filled >= row.qty - _EPS
        conn.execute(
            update(m.paper_orders)
            .where(m.paper_orders.c.broker_order_id == row.broker_order_id)
            .values(
                status=str(OrderState.FILLED if done else OrderState.PARTIALLY_FILLED),
                filled_qty=row.qty if done else filled,
                avg_fill_price=avg,
                updated_at=now,
            )
        )
        return True

    def process_tick(self, now: datetime | None = None) -> list[BrokerOrder]:
        """Work every open order once (fill a slice or expire it); returns the orders that changed."""
        now = ensure_utc(now) if now is not None else self.clock.now()
        changed: list[BrokerOrder] = []
        with self.engine.begin() as conn:
            ids = [r.client_order_id for r in self._open_rows(conn)]
        for cid in ids:
            with self.engine.begin() as conn:  # one order per transaction: a failure stays local
                row = self._row(conn, cid, lock=True)
                if row is None or OrderState(row.status) not in OPEN_STATES:
                    continue
                if self._work(conn, row, now):
                    changed.append(self._to_broker_order(conn, self._row(conn, cid)))
        return changed

    def get_order_by_client_id(self, client_order_id: str) -> BrokerOrder | None:
        with self.engine.begin() as conn:
            row = self._row(conn, client_order_id)
            return None if row is None else self._to_broker_order(conn, row)

    def cancel_order(self, client_order_id: str) -> BrokerOrder:
        now = self.clock.now()
        with self.engine.begin() as conn:
            row = self._row(conn, client_order_id, lock=True)
            if row is None:
                raise BrokerRejectedError(f"unknown order {client_order_id}")
            if OrderState(row.status) not in OPEN_STATES:
                raise BrokerRejectedError(
                    f"order {client_order_id} is {row.status}: nothing to cancel",
                    order=self._to_broker_order(conn, row),
                )
            conn.execute(
                update(m.paper_orders)
                .where(m.paper_orders.c.broker_order_id == row.broker_order_id)
                .values(status=str(OrderState.CANCELLED), updated_at=now)
            )
            return self._to_broker_order(conn, self._row(conn, client_order_id))

    def list_orders(self, open_only: bool = False) -> list[BrokerOrder]:
        with self.engine.begin() as conn:
            rows = (
                self._open_rows(conn)
                if open_only
                else conn.execute(
                    select(m.paper_orders).order_by(
                        m.paper_orders.c.created_at, m.paper_orders.c.broker_order_id
                    )
                ).all()
            )
            return self._to_broker_orders(conn, rows)

    def _to_broker_orders(self, conn: Connection, rows: Sequence[Any]) -> list[BrokerOrder]:
        """``[_to_broker_order(r) for r in rows]`` with every order's fills read in one query, not
        one query per order (a long replay's broker holds every order it ever took)."""
        by_order: dict[str, list[Any]] = {r.broker_order_id: [] for r in rows}
        ids = list(by_order)
        f = m.paper_fills.c
        for start in range(0, len(ids), 500):  # bound the IN list
            q = select(m.paper_fills).where(f.broker_order_id.in_(ids[start:start + 500])).order_by(f.fill_id)
            for fr in conn.execute(q):
                by_order[fr.broker_order_id].append(fr)
        return [self._to_broker_order(conn, r, by_order[r.broker_order_id]) for r in rows]

    def get_positions(self) -> dict[str, BrokerPosition]:
        with self.engine.begin() as conn:
            return self._positions(conn)

    def get_account(self) -> BrokerAccount:
        now = self.clock.now()
        with self.engine.begin() as conn:
            cash = self._cash(conn)
            equity = cash
            for pos in self._positions(conn).values():
                try:
                    q = self._quote(pos.symbol, now)
                except BrokerUnavailableError:
                    q = None
                mark = (q.bid + q.ask) / 2 if q else pos.avg_price
                equity += pos.qty * mark
            buying_power = cash - self._reserved_cash(conn, now)
        return BrokerAccount(cash=cash, equity=equity, buying_power=buying_power)


def _finite(x: Any) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False
