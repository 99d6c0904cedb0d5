"""The transactional ledger: engine setup, migrations, and the store the OMS writes through.

SQLite (WAL, foreign keys on, ``BEGIN IMMEDIATE`` so writers serialise instead of failing
mid-transaction) is the embedded default; PostgreSQL is chosen by URL. Every multi-row change
(approval use + order intent, fills + state + positions) happens in one transaction, and order
state changes are compare-and-set on the current state, so two processes cannot both move the
same order.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, func, insert, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql.expression import cast
from sqlalchemy.types import Text

from ais_pipelines.core.audit import (
    AuditRecord,
    AuditRecordUnreadableError,
    check_link,
    ledger_identifier,
)
from ais_pipelines.core.order_states import (
    OrderEvent,
    OrderState,
    events_between,
    transition,
)
from ais_pipelines.core.reason_codes import ReasonCode
from ais_pipelines.core.trading_state import TradingMode, TradingStatus, initial_status
from ais_pipelines.ledger import models as m
from ais_pipelines.runtime_files import private_file

DEFAULT_LEDGER_URL = "sqlite:///runtime/ledger.sqlite"
MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# "Never changed" timestamp of the initial trading state of an empty ledger.
LEDGER_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_QTY_EPS = 1e-9


# --------------------------------------------------------------------------------------------
# errors


class LedgerError(Exception):
    """Base class of ledger refusals (nothing was written)."""


class ApprovalAlreadyUsedError(LedgerError):
    reason_code = ReasonCode.APPROVAL_REPLAYED


class DuplicateOrderError(LedgerError):
    """An order with this client order id or idempotency key already exists."""

    reason_code = ReasonCode.IDEMPOTENCY_CONFLICT


class OrderNotFoundError(LedgerError):
    pass


class StaleOrderStateError(LedgerError):
    """The order moved since it was read (compare-and-set lost)."""

    reason_code = ReasonCode.ILLEGAL_ORDER_TRANSITION


class ReconciliationMismatchError(LedgerError):
    """The broker reports something the ledger cannot legally reach (§J1)."""

    reason_code = ReasonCode.RECONCILIATION_MISMATCH


class ReviewDecisionError(LedgerError):
    pass


# --------------------------------------------------------------------------------------------
# engine and migrations


def _is_sqlite(engine_or_url: Engine | str) -> bool:
    url = engine_or_url.url if isinstance(engine_or_url, Engine) else make_url(engine_or_url)
    return url.get_backend_name() == "sqlite"


def create_ledger_engine(url: str = DEFAULT_LEDGER_URL, **kwargs: Any) -> Engine:
    """An engine with the ledger's connection settings (SQLite: WAL, FKs, immediate writes)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        kwargs.setdefault("pool_pre_ping", True)
        return create_engine(url, **kwargs)
    database = parsed.database or ""
    in_memory = database in ("", ":memory:") or database.startswith("file::memory:")
    if in_memory:
        # One shared connection, or every checkout would see a different empty database.
        kwargs.setdefault("poolclass", StaticPool)
        kwargs.setdefault("connect_args", {"check_same_thread": False})
    else:
        parent = Path(database).parent
        if not parent.exists():
            parent.mkdir(parents=True, mode=0o700)  # a directory we create is owner-only
        if not Path(database).exists():
            private_file(database)  # positions and approvals: owner-only from the first byte (SQLite
            # creates -wal/-shm with the database's mode)
    engine = create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # pysqlite's implicit BEGIN is deferred and upgrades locks lazily (SQLITE_BUSY mid-way);
        # take control of BEGIN ourselves.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=10000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


# The newest migration in migrations/versions (a test keeps it equal to alembic's head). An
# opened ledger already at this revision skips alembic, whose import costs ~1 s per CLI call.
LEDGER_HEAD_REVISION = "0002"


def _alembic_config(url: str | None = None) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships migrations
        raise RuntimeError("no ledger migrations found")
    return head


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def _at_head(engine: Engine) -> bool:
    """True when the ledger's recorded revision is the newest one (read without alembic)."""
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    except Exception:  # no version table yet: a new ledger
        return False
    return rows == [LEDGER_HEAD_REVISION]


def upgrade_ledger(url_or_engine: str | Engine = DEFAULT_LEDGER_URL) -> Engine:
    """Bring the ledger schema to the newest revision (idempotent). Returns the engine used."""
    engine = create_ledger_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
    if _at_head(engine):
        return engine
    from alembic import command

    cfg = _alembic_config()
    with engine.begin() as conn:
        # Two processes starting together must not both run the same DDL.
        _serialize(conn, "ais-ledger-migrations")
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    return engine


def _serialize(conn: Connection, name: str) -> None:
    """Hold a transaction-scoped lock named ``name`` (SQLite: BEGIN IMMEDIATE already does)."""
    if conn.dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})


# --------------------------------------------------------------------------------------------
# records


def _codes(codes: Iterable[ReasonCode | str] | None) -> list[str]:
    return [str(ReasonCode(c)) for c in dict.fromkeys(codes or ())]


@dataclass(frozen=True)
class ApprovalRecord:
    approval_id: str
    order_payload: dict[str, Any]
    signature: str
    expires_at: datetime
    created_at: datetime
    used_at: datetime | None
    used_by: str | None


@dataclass(frozen=True)
class ReviewItem:
    item_id: str
    order_payload: dict[str, Any]
    reasons: tuple[str, ...]
    status: str
    created_at: datetime
    decided_by: str | None
    decided_at: datetime | None
    why: str | None


@dataclass(frozen=True)
class OrderIntent:
    """What the OMS writes before any broker call."""

    client_order_id: str
    idempotency_key: str
    approval_id: str
    payload_hash: str
    payload: dict[str, Any]
    symbol: str
    side: str
    qty: float
    order_type: str
    mode: str
    limit_price: float | None = None
    notional: float | None = None
    reduce_only: bool = False


@dataclass(frozen=True)
class OrderRecord:
    client_order_id: str
    idempotency_key: str
    approval_id: str
    payload_hash: str
    payload: dict[str, Any]
    symbol: str
    side: str
    qty: float
    order_type: str
    limit_price: float | None
    notional: float | None
    reduce_only: bool
    mode: str
    state: OrderState
    broker_order_id: str | None
    filled_qty: float
    avg_fill_price: float | None
    reason_codes: tuple[str, ...]
    created_at: datetime
    updated_at: datetime
    submitted_at: datetime | None


@dataclass(frozen=True)
class OrderEventRecord:
    id: int
    client_order_id: str
    event: str
    from_state: str | None
    to_state: str
    reason_codes: tuple[str, ...]
    detail: dict[str, Any] | None
    ts: datetime


@dataclass(frozen=True)
class FillRecord:
    fill_id: str
    client_order_id: str
    symbol: str
    side: str
    qty: float
    price: float
    fees: float
    ts: datetime


@dataclass(frozen=True)
class PositionRecord:
    symbol: str
    qty: float
    avg_price: float
    realized_pnl: float
    updated_at: datetime


@dataclass(frozen=True)
class ExecutionEventRecord:
    id: int
    ts: datetime
    kind: str
    client_order_id: str | None
    reason_codes: tuple[str, ...]
    payload: dict[str, Any] | None


@dataclass(frozen=True)
class BrokerSyncResult:
    order: OrderRecord
    events: tuple[OrderEvent, ...] = field(default_factory=tuple)
    new_fills: tuple[FillRecord, ...] = field(default_factory=tuple)


def _order(row: Any) -> OrderRecord:
    return OrderRecord(
        client_order_id=row.client_order_id,
        idempotency_key=row.idempotency_key,
        approval_id=row.approval_id,
        payload_hash=row.payload_hash,
        payload=row.payload,
        symbol=row.symbol,
        side=row.side,
        qty=row.qty,
        order_type=row.order_type,
        limit_price=row.limit_price,
        notional=row.notional,
        reduce_only=bool(row.reduce_only),
        mode=row.mode,
        state=OrderState(row.state),
        broker_order_id=row.broker_order_id,
        filled_qty=row.filled_qty,
        avg_fill_price=row.avg_fill_price,
        reason_codes=tuple(row.reason_codes or ()),
        created_at=row.created_at,
        updated_at=row.updated_at,
        submitted_at=row.submitted_at,
    )


def _fill(row: Any) -> FillRecord:
    return FillRecord(
        row.fill_id, row.client_order_id, row.symbol, row.side, row.qty, row.price, row.fees, row.ts
    )


def _status(row: Any) -> TradingStatus:
    return TradingStatus(
        TradingMode(row.mode), row.ts, row.actor, row.why, tuple(ReasonCode(c) for c in row.reason_codes)
    )


def apply_fill_to_position(
    qty: float, avg_price: float, realized: float, side: str, fill_qty: float, price: float, fees: float
) -> tuple[float, float, float]:
    """Signed position after a fill: (qty, avg_price, realized_pnl). Fees reduce realized P&L."""
    signed = fill_qty if side == "BUY" else -fill_qty
    realized -= fees
    if abs(qty) < _QTY_EPS or (qty > 0) == (signed > 0):
        new_qty = qty + signed
        avg = (abs(qty) * avg_price + fill_qty * price) / abs(new_qty)
        return new_qty, avg, realized
    closing = min(abs(signed), abs(qty))
    realized += closing * (price - avg_price) * (1.0 if qty > 0 else -1.0)
    new_qty = qty + signed
    if abs(new_qty) < _QTY_EPS:
        return 0.0, 0.0, realized
    if (new_qty > 0) != (qty > 0):  # flipped through zero: the remainder opens at this price
        return new_qty, price, realized
    return new_qty, avg_price, realized


# --------------------------------------------------------------------------------------------
# the store


class LedgerStore:
    """Typed access to the ledger tables; every public method is one transaction."""

    def __init__(self, engine: Engine):
        self.engine = engine

    @classmethod
    def open(cls, url: str = DEFAULT_LEDGER_URL) -> LedgerStore:
        """Engine + migrations to head: the startup path."""
        return cls(upgrade_ledger(create_ledger_engine(url)))

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    def dispose(self) -> None:
        self.engine.dispose()

    # --- approvals --------------------------------------------------------------------------

    def record_approval(
        self,
        approval_id: str,
        order_payload: Mapping[str, Any],
        signature: str,
        expires_at: datetime,
        created_at: datetime,
    ) -> ApprovalRecord:
        """Store an issued approval; recording the same id again keeps the first row."""
        with self.transaction() as conn:
            existing = conn.execute(
                select(m.approvals).where(m.approvals.c.approval_id == approval_id)
            ).first()
            if existing is None:
                conn.execute(
                    insert(m.approvals).values(
                        approval_id=approval_id,
                        order_payload=dict(order_payload),
                        signature=signature,
                        expires_at=expires_at,
                        created_at=created_at,
                    )
                )
        found = self.get_approval(approval_id)
        assert found is not None
        return found

    def get_approval(self, approval_id: str) -> ApprovalRecord | None:
        with self.transaction() as conn:
            row = conn.execute(select(m.approvals).where(m.approvals.c.approval_id == approval_id)).first()
        if row is None:
            return None
        return ApprovalRecord(
            row.approval_id,
            row.order_payload,
            row.signature,
            row.expires_at,
            row.created_at,
            row.used_at,
            row.used_by,
        )

    def is_approval_used(self, approval_id: str) -> bool:
        with self.transaction() as conn:
            used = conn.execute(
                select(m.approvals.c.used_at).where(m.approvals.c.approval_id == approval_id)
            ).scalar_one_or_none()
        return used is not None

    # --- orders -----------------------------------------------------------------------------

    def create_order_intent(
        self,
        intent: OrderIntent,
        *,
        signature: str,
        expires_at: datetime,
        now: datetime,
        reason_codes: Iterable[ReasonCode] = (),
    ) -> OrderRecord:
        """Consume the approval and write the NEW order in one transaction.

        Raises ``ApprovalAlreadyUsedError`` (someone used it first) or ``DuplicateOrderError``
        (the idempotency key or client order id exists); in both cases nothing is written.
        """
        try:
            with self.transaction() as conn:
                a = m.approvals.c
                row = conn.execute(select(m.approvals).where(a.approval_id == intent.approval_id)).first()
                if row is None:
                    conn.execute(
                        insert(m.approvals).values(
                            approval_id=intent.approval_id,
                            order_payload=intent.payload,
                            signature=signature,
                            expires_at=expires_at,
                            created_at=now,
                            used_at=now,
                            used_by=intent.client_order_id,
                        )
                    )
                else:
                    won = conn.execute(
                        update(m.approvals)
                        .where(a.approval_id == intent.approval_id, a.used_at.is_(None))
                        .values(used_at=now, used_by=intent.client_order_id)
                    ).rowcount
                    if won != 1:
                        raise ApprovalAlreadyUsedError(f"approval {intent.approval_id} was already used")
                o = m.orders.c
                dup = conn.execute(
                    select(o.client_order_id).where(
                        (o.idempotency_key == intent.idempotency_key)
                        | (o.client_order_id == intent.client_order_id)
                    )
                ).first()
                if dup is not None:
                    raise DuplicateOrderError(
                        f"order {intent.client_order_id} / {intent.idempotency_key} exists"
                    )
                codes = _codes(reason_codes)
                conn.execute(
                    insert(m.orders).values(
                        client_order_id=intent.client_order_id,
                        idempotency_key=intent.idempotency_key,
                        approval_id=intent.approval_id,
                        payload_hash=intent.payload_hash,
                        payload=intent.payload,
                        symbol=intent.symbol,
                        side=intent.side,
                        qty=intent.qty,
                        order_type=intent.order_type,
                        limit_price=intent.limit_price,
                        notional=intent.notional,
                        reduce_only=intent.reduce_only,
                        mode=intent.mode,
                        state=str(OrderState.NEW),
                        filled_qty=0.0,
                        reason_codes=codes,
                        created_at=now,
                        updated_at=now,
                    )
                )
                conn.execute(
                    insert(m.order_events).values(
                        client_order_id=intent.client_order_id,
                        event="CREATE",
                        from_state=None,
                        to_state=str(OrderState.NEW),
                        reason_codes=codes,
                        detail={"idempotency_key": intent.idempotency_key, "approval_id": intent.approval_id},
                        ts=now,
                    )
                )
        except IntegrityError as exc:
            # A concurrent writer won a unique constraint between our check and our insert.
            raise DuplicateOrderError(str(exc.orig)) from exc
        order = self.get_order(intent.client_order_id)
        assert order is not None
        return order

    def get_order(self, client_order_id: str) -> OrderRecord | None:
        with self.transaction() as conn:
            row = conn.execute(select(m.orders).where(m.orders.c.client_order_id == client_order_id)).first()
        return None if row is None else _order(row)

    def get_order_by_idempotency_key(self, key: str) -> OrderRecord | None:
        with self.transaction() as conn:
            row = conn.execute(select(m.orders).where(m.orders.c.idempotency_key == key)).first()
        return None if row is None else _order(row)

    def list_orders(self, states: Iterable[OrderState] | None = None) -> list[OrderRecord]:
        q = select(m.orders).order_by(m.orders.c.created_at, m.orders.c.client_order_id)
        if states is not None:
            q = q.where(m.orders.c.state.in_([str(s) for s in states]))
        with self.transaction() as conn:
            return [_order(r) for r in conn.execute(q)]

    def session_orders(self, as_of: str) -> list[OrderRecord]:
        """Orders whose signed payload belongs to session ``as_of`` (ISO date), in ``list_orders``
        order: filtered in SQL, not by reading every order ever made (issue 12: 63 ms a call after
        252 replayed sessions)."""
        o = m.orders.c
        q = select(m.orders).where(o.payload["as_of"].as_string() == as_of).order_by(o.created_at, o.client_order_id)
        with self.transaction() as conn:
            return [_order(r) for r in conn.execute(q)]

    def latest_activity(self) -> datetime | None:
        """The newest instant recorded (execution events, fills, order updates): three aggregates."""
        cols = (m.execution_events.c.ts, m.fills.c.ts, m.orders.c.updated_at)
        with self.transaction() as conn:
            stamps = [conn.execute(select(func.max(c))).scalar() for c in cols]
        return max((t for t in stamps if t is not None), default=None)

    def order_events(self, client_order_id: str) -> list[OrderEventRecord]:
        e = m.order_events.c
        with self.transaction() as conn:
            rows = conn.execute(
                select(m.order_events).where(e.client_order_id == client_order_id).order_by(e.id)
            )
            return [
                OrderEventRecord(
                    r.id,
                    r.client_order_id,
                    r.event,
                    r.from_state,
                    r.to_state,
                    tuple(r.reason_codes),
                    r.detail,
                    r.ts,
                )
                for r in rows
            ]

    def _locked_order(self, conn: Connection, client_order_id: str) -> Any:
        row = conn.execute(
            select(m.orders).where(m.orders.c.client_order_id == client_order_id).with_for_update()
        ).first()
        if row is None:
            raise OrderNotFoundError(client_order_id)
        return row

    def _write_events(
        self,
        conn: Connection,
        row: Any,
        events: Sequence[OrderEvent],
        *,
        now: datetime,
        codes: list[str],
        detail: Mapping[str, Any] | None,
        values: dict[str, Any],
    ) -> OrderState:
        state = OrderState(row.state)
        for ev in events:
            nxt = transition(state, ev)  # raises IllegalTransitionError: nothing is committed
            conn.execute(
                insert(m.order_events).values(
                    client_order_id=row.client_order_id,
                    event=str(ev),
                    from_state=str(state),
                    to_state=str(nxt),
                    reason_codes=codes,
                    detail=dict(detail) if detail else None,
                    ts=now,
                )
            )
            if ev is OrderEvent.SUBMIT:
                values["submitted_at"] = now
            state = nxt
        merged = list(dict.fromkeys([*(row.reason_codes or []), *codes]))
        done = conn.execute(
            update(m.orders)
            .where(m.orders.c.client_order_id == row.client_order_id, m.orders.c.state == row.state)
            .values(state=str(state), updated_at=now, reason_codes=merged, **values)
        ).rowcount
        if done != 1:
            raise StaleOrderStateError(f"order {row.client_order_id} moved concurrently")
        return state

    def apply_order_event(
        self,
        client_order_id: str,
        event: OrderEvent,
        *,
        now: datetime,
        expected_state: OrderState | None = None,
        reason_codes: Iterable[ReasonCode] = (),
        detail: Mapping[str, Any] | None = None,
        broker_order_id: str | None = None,
    ) -> OrderRecord:
        """One transition through the table (``IllegalTransitionError`` if not allowed)."""
        with self.transaction() as conn:
            row = self._locked_order(conn, client_order_id)
            if expected_state is not None and row.state != str(expected_state):
                raise StaleOrderStateError(
                    f"order {client_order_id} is {row.state}, expected {expected_state}"
                )
            values: dict[str, Any] = {}
            if broker_order_id is not None:
                values["broker_order_id"] = broker_order_id
            self._write_events(
                conn,
                row,
                [OrderEvent(event)],
                now=now,
                codes=_codes(reason_codes),
                detail=detail,
                values=values,
            )
        order = self.get_order(client_order_id)
        assert order is not None
        return order

    def apply_broker_state(
        self,
        client_order_id: str,
        *,
        target_state: OrderState,
        now: datetime,
        broker_order_id: str | None = None,
        fills: Sequence[FillRecord] = (),
        filled_qty: float | None = None,
        avg_fill_price: float | None = None,
        reason_codes: Iterable[ReasonCode] = (),
        detail: Mapping[str, Any] | None = None,
    ) -> BrokerSyncResult:
        """Catch the order up with the broker's view in one transaction (broker is the truth).

        New fills (by fill id) are recorded and positions updated; the state moves along the
        shortest legal path of the transition table. If no legal path exists, or the broker
        reports another broker order id or more than the order quantity, nothing is written
        and ``ReconciliationMismatchError`` is raised.
        """
        target_state = OrderState(target_state)
        with self.transaction() as conn:
            row = self._locked_order(conn, client_order_id)
            path = events_between(row.state, target_state)
            if path is None:
                raise ReconciliationMismatchError(
                    f"order {client_order_id}: ledger {row.state} cannot become broker {target_state}"
                )
            if broker_order_id and row.broker_order_id and broker_order_id != row.broker_order_id:
                raise ReconciliationMismatchError(
                    f"order {client_order_id}: broker id {broker_order_id} != ledger {row.broker_order_id}"
                )
            known = set(
                conn.execute(
                    select(m.fills.c.fill_id).where(m.fills.c.client_order_id == client_order_id)
                ).scalars()
            )
            new_fills = [f for f in fills if f.fill_id not in known]
            for f in new_fills:
                if f.client_order_id != client_order_id or f.symbol != row.symbol or f.side != row.side:
                    raise ReconciliationMismatchError(
                        f"fill {f.fill_id} does not belong to order {client_order_id}"
                    )
                conn.execute(insert(m.fills).values(**f.__dict__))
                self._apply_position(conn, f, now)
            totals = conn.execute(
                select(
                    func.coalesce(func.sum(m.fills.c.qty), 0.0), func.sum(m.fills.c.qty * m.fills.c.price)
                ).where(m.fills.c.client_order_id == client_order_id)
            ).one()
            ledger_filled = float(totals[0])
            qty_filled = ledger_filled if filled_qty is None else float(filled_qty)
            if qty_filled > row.qty + _QTY_EPS or ledger_filled > row.qty + _QTY_EPS:
                raise ReconciliationMismatchError(
                    f"order {client_order_id}: filled {max(qty_filled, ledger_filled)} > ordered {row.qty}"
                )
            if avg_fill_price is None and ledger_filled > 0:
                avg_fill_price = float(totals[1]) / ledger_filled
            if (
                not path
                and target_state is OrderState.PARTIALLY_FILLED
                and qty_filled > row.filled_qty + _QTY_EPS
            ):
                path = [OrderEvent.PARTIAL_FILL]  # another partial fill: its own event in the history
            unchanged = (
                not path
                and not new_fills
                and abs(qty_filled - row.filled_qty) <= _QTY_EPS
                and (not broker_order_id or broker_order_id == row.broker_order_id)
            )
            if unchanged:  # a poll that learnt nothing writes nothing
                return BrokerSyncResult(_order(row))
            values: dict[str, Any] = {"filled_qty": qty_filled, "avg_fill_price": avg_fill_price}
            if broker_order_id:
                values["broker_order_id"] = broker_order_id
            fill_detail = dict(detail or {})
            if new_fills:
                fill_detail["fills"] = [f.fill_id for f in new_fills]
            self._write_events(
                conn,
                row,
                path,
                now=now,
                codes=_codes(reason_codes),
                detail=fill_detail or None,
                values=values,
            )
        order = self.get_order(client_order_id)
        assert order is not None
        return BrokerSyncResult(order, tuple(path), tuple(new_fills))

    # --- fills and positions ----------------------------------------------------------------

    def _apply_position(self, conn: Connection, f: FillRecord, now: datetime) -> None:
        p = m.positions.c
        # Create the row first (a no-op when it exists): SELECT … FOR UPDATE locks nothing on a
        # missing row, so two processes filling a new symbol at once both inserted (PostgreSQL
        # unique violation, found by the concurrent-submit fault test).
        empty = {"symbol": f.symbol, "qty": 0.0, "avg_price": 0.0, "realized_pnl": 0.0, "updated_at": now}
        if conn.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        else:
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        conn.execute(dialect_insert(m.positions).values(**empty).on_conflict_do_nothing(index_elements=["symbol"]))
        row = conn.execute(select(m.positions).where(p.symbol == f.symbol).with_for_update()).first()
        qty, avg, realized = (row.qty, row.avg_price, row.realized_pnl) if row else (0.0, 0.0, 0.0)
        qty, avg, realized = apply_fill_to_position(qty, avg, realized, f.side, f.qty, f.price, f.fees)
        values = {"qty": qty, "avg_price": avg, "realized_pnl": realized, "updated_at": now}
        conn.execute(update(m.positions).where(p.symbol == f.symbol).values(**values))

    def fills(self, client_order_id: str | None = None) -> list[FillRecord]:
        q = select(m.fills).order_by(m.fills.c.ts, m.fills.c.fill_id)
        if client_order_id is not None:
            q = q.where(m.fills.c.client_order_id == client_order_id)
        with self.transaction() as conn:
            return [_fill(r) for r in conn.execute(q)]

    def fills_of(self, client_order_ids: Iterable[str]) -> dict[str, list[FillRecord]]:
        """``{cid: fills(cid)}`` for many orders in one query (each list in ``fills`` order)."""
        ids = list(dict.fromkeys(client_order_ids))
        out: dict[str, list[FillRecord]] = {c: [] for c in ids}
        f = m.fills.c
        with self.transaction() as conn:
            for start in range(0, len(ids), 500):  # bound the IN list
                q = select(m.fills).where(f.client_order_id.in_(ids[start:start + 500])).order_by(f.ts, f.fill_id)
                for r in conn.execute(q):
                    out[r.client_order_id].append(_fill(r))
        return out

    def fills_after(self, key: tuple[datetime, str] | None, count: int) -> list[FillRecord] | None:
        """The fills after ``key`` = (ts, fill_id) in ``fills`` order, provided exactly ``count``
        fills sort on or before it (fills are only ever inserted: then the first ``count`` of
        ``fills()`` are the ones already seen); ``None`` when not (a fill arrived out of order)."""
        f = m.fills.c
        with self.transaction() as conn:
            if key is None:
                seen = 0
                q = select(m.fills)
            else:
                ts, fid = key
                on_or_before = (f.ts < ts) | ((f.ts == ts) & (f.fill_id <= fid))
                seen = int(conn.execute(select(func.count()).select_from(m.fills).where(on_or_before)).scalar() or 0)
                q = select(m.fills).where(~on_or_before)
            if seen != count:
                return None
            return [_fill(r) for r in conn.execute(q.order_by(f.ts, f.fill_id))]

    def last_orders(self, states: Iterable[OrderState] | None, keep: Callable[[OrderRecord], bool], n: int,
                    batch: int = 200) -> list[OrderRecord]:
        """``[o for o in list_orders(states) if keep(o)][-n:]``, read newest first in batches (one
        transaction) and stopped once ``n`` are found, instead of reading every order ever made."""
        if n <= 0:  # the slice's own meaning ([-0:] is everything)
            return [r for r in self.list_orders(states) if keep(r)][-n:]
        o = m.orders.c
        q = select(m.orders).order_by(o.created_at.desc(), o.client_order_id.desc())
        if states is not None:
            q = q.where(o.state.in_([str(s) for s in states]))
        found: list[OrderRecord] = []
        offset = 0
        with self.transaction() as conn:
            while len(found) < n:
                rows = [_order(r) for r in conn.execute(q.limit(batch).offset(offset))]
                found += [r for r in rows if keep(r)]
                if len(rows) < batch:
                    break
                offset += batch
        return found[:n][::-1]

    def positions(self) -> dict[str, PositionRecord]:
        with self.transaction() as conn:
            rows = conn.execute(select(m.positions).order_by(m.positions.c.symbol))
            return {
                r.symbol: PositionRecord(r.symbol, r.qty, r.avg_price, r.realized_pnl, r.updated_at)
                for r in rows
            }

    # --- execution events -------------------------------------------------------------------

    def record_execution_event(
        self,
        kind: str,
        *,
        now: datetime,
        client_order_id: str | None = None,
        reason_codes: Iterable[ReasonCode] = (),
        payload: Mapping[str, Any] | None = None,
    ) -> None:
        with self.transaction() as conn:
            conn.execute(
                insert(m.execution_events).values(
                    ts=now,
                    kind=kind,
                    client_order_id=client_order_id,
                    reason_codes=_codes(reason_codes),
                    payload=dict(payload) if payload is not None else None,
                )
            )

    def execution_events(self, client_order_id: str | None = None) -> list[ExecutionEventRecord]:
        q = select(m.execution_events).order_by(m.execution_events.c.id)
        if client_order_id is not None:
            q = q.where(m.execution_events.c.client_order_id == client_order_id)
        with self.transaction() as conn:
            return [
                ExecutionEventRecord(r.id, r.ts, r.kind, r.client_order_id, tuple(r.reason_codes), r.payload)
                for r in conn.execute(q)
            ]

    # --- trading state ----------------------------------------------------------------------

    def current_trading_status(self) -> TradingStatus:
        """The newest persisted state; an empty history is ACTIVE (a fresh install)."""
        with self.transaction() as conn:
            return self._current_status(conn)

    def _current_status(self, conn: Connection) -> TradingStatus:
        t = m.trading_state.c
        row = conn.execute(select(m.trading_state).order_by(t.id.desc()).limit(1)).first()
        return initial_status(LEDGER_EPOCH) if row is None else _status(row)

    def change_trading_status(self, change: Callable[[TradingStatus], TradingStatus]) -> TradingStatus:
        """Read-modify-write under a lock, so concurrent changes (a halt and a resume) serialise.

        ``change`` is one of the pure functions of ``core.trading_state`` (partially applied); a
        change that returns the same status writes nothing.
        """
        with self.transaction() as conn:
            _serialize(conn, "ais-trading-state")
            current = self._current_status(conn)
            new = change(current)
            if new != current:
                conn.execute(
                    insert(m.trading_state).values(
                        mode=str(new.mode),
                        actor=new.actor,
                        why=new.why,
                        reason_codes=_codes(new.reason_codes),
                        latched=new.latched,
                        ts=new.since,
                    )
                )
            return new

    def trading_status_history(self) -> list[TradingStatus]:
        with self.transaction() as conn:
            rows = conn.execute(select(m.trading_state).order_by(m.trading_state.c.id))
            return [_status(r) for r in rows]

    # --- review queue (§H5) -----------------------------------------------------------------

    def enqueue_review(
        self,
        item_id: str,
        order_payload: Mapping[str, Any],
        reasons: Iterable[ReasonCode | str],
        now: datetime,
    ) -> ReviewItem:
        """Queue an order for a human; enqueuing the same item again keeps the first row."""
        with self.transaction() as conn:
            exists = conn.execute(
                select(m.review_queue.c.item_id).where(m.review_queue.c.item_id == item_id)
            ).first()
            if exists is None:
                conn.execute(
                    insert(m.review_queue).values(
                        item_id=item_id,
                        order_payload=dict(order_payload),
                        reasons=_codes(reasons),
                        status="PENDING",
                        created_at=now,
                    )
                )
        item = self.get_review(item_id)
        assert item is not None
        return item

    def get_review(self, item_id: str) -> ReviewItem | None:
        with self.transaction() as conn:
            row = conn.execute(select(m.review_queue).where(m.review_queue.c.item_id == item_id)).first()
        return None if row is None else _review(row)

    def list_reviews(self, status: str | None = None) -> list[ReviewItem]:
        q = select(m.review_queue).order_by(m.review_queue.c.created_at, m.review_queue.c.item_id)
        if status is not None:
            q = q.where(m.review_queue.c.status == status)
        with self.transaction() as conn:
            return [_review(r) for r in conn.execute(q)]

    def decide_review(
        self, item_id: str, *, approve: bool, actor: str, why: str, now: datetime
    ) -> ReviewItem:
        """A person approves or rejects a PENDING item, once. Needs actor and a reason."""
        if not actor or not actor.strip() or not why or not why.strip():
            raise ReviewDecisionError("a review decision needs an actor and a reason (why)")
        r = m.review_queue.c
        with self.transaction() as conn:
            done = conn.execute(
                update(m.review_queue)
                .where(r.item_id == item_id, r.status == "PENDING")
                .values(
                    status="APPROVED" if approve else "REJECTED",
                    decided_by=actor.strip(),
                    decided_at=now,
                    why=why.strip(),
                )
            ).rowcount
        if done != 1:
            item = self.get_review(item_id)
            state = "missing" if item is None else f"already {item.status}"
            raise ReviewDecisionError(f"review item {item_id} is {state}")
        item = self.get_review(item_id)
        assert item is not None
        return item


def _review(row: Any) -> ReviewItem:
    return ReviewItem(
        row.item_id,
        row.order_payload,
        tuple(row.reasons),
        row.status,
        row.created_at,
        row.decided_by,
        row.decided_at,
        row.why,
    )


# --------------------------------------------------------------------------------------------
# audit store


class SqlAuditStore:
    """``AuditStore`` over the ``audit_log`` table (see ``core.audit`` for the contract).

    ``append_next`` reads the head, builds the record and inserts it in ONE transaction under
    the audit lock (SQLite: the engine's ``BEGIN IMMEDIATE`` write lock; PostgreSQL: an
    advisory transaction lock), so concurrent processes queue instead of racing. The primary
    key on ``seq`` is the final guard: the chain cannot fork. Reads return the JSON columns as
    raw text and parse them per row, so a corrupt row is reported at its own seq.
    """

    def __init__(self, engine: Engine):
        self.engine = engine

    @property
    def ledger_id(self) -> str:
        """Identifier of this ledger for the audit anchor: a digest of the URL without password."""
        return ledger_identifier(self.engine.url.set(password=None).render_as_string(hide_password=False))

    def append(self, record: AuditRecord) -> None:
        with self.engine.begin() as conn:
            _serialize(conn, "ais-audit-log")
            self._insert(conn, self._last(conn), record)

    def append_next(self, build: Callable[[AuditRecord | None], AuditRecord]) -> AuditRecord:
        with self.engine.begin() as conn:
            _serialize(conn, "ais-audit-log")
            last = self._last(conn)  # inside the lock: nobody can append between read and insert
            record = build(last)
            self._insert(conn, last, record)
        return record

    @staticmethod
    def _insert(conn: Connection, last: AuditRecord | None, record: AuditRecord) -> None:
        check_link(last, record)
        conn.execute(
            insert(m.audit_log).values(
                seq=record.seq,
                ts=record.ts,
                event_type=record.event_type,
                actor=record.actor,
                subject=record.subject,
                payload=record.payload,
                reason_codes=list(record.reason_codes),
                prev_hash=record.prev_hash,
                hash=record.hash,
            )
        )

    def last(self) -> AuditRecord | None:
        with self.engine.begin() as conn:
            return self._last(conn)

    @staticmethod
    def _last(conn: Connection) -> AuditRecord | None:
        row = conn.execute(_audit_select().order_by(m.audit_log.c.seq.desc()).limit(1)).first()
        return None if row is None else _audit(row)

    def iter_records(self) -> Iterator[AuditRecord]:
        with self.engine.begin() as conn:  # one snapshot, raw text only (cheap)
            rows = conn.execute(_audit_select().order_by(m.audit_log.c.seq)).all()
        return (_audit(r) for r in rows)  # parsed lazily: a bad row fails at its own seq


def _audit_select() -> Any:
    c = m.audit_log.c
    # CAST to text: the JSON type (and psycopg) would parse every row before we see any.
    return select(
        c.seq,
        c.ts,
        c.event_type,
        c.actor,
        c.subject,
        cast(c.payload, Text).label("payload"),
        cast(c.reason_codes, Text).label("reason_codes"),
        c.prev_hash,
        c.hash,
    )


def _audit(row: Any) -> AuditRecord:
    seq = row.seq

    def parse(name: str, raw: Any) -> Any:
        if not isinstance(raw, str):
            raise AuditRecordUnreadableError(seq, f"{name} is not JSON text (got {type(raw).__name__})")
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise AuditRecordUnreadableError(seq, f"{name} is not valid JSON ({exc})") from exc

    payload = parse("payload", row.payload)
    codes = parse("reason_codes", row.reason_codes)
    if not isinstance(codes, list) or not all(isinstance(c, str) for c in codes):
        raise AuditRecordUnreadableError(seq, "reason_codes is not a list of strings")
    for name in ("ts", "event_type", "actor", "subject", "prev_hash", "hash"):
        if not isinstance(getattr(row, name), str):
            raise AuditRecordUnreadableError(seq, f"{name} is not text")
    return AuditRecord(
        seq=seq,
        ts=row.ts,
        event_type=row.event_type,
        actor=row.actor,
        subject=row.subject,
        payload=payload,
        reason_codes=tuple(codes),
        prev_hash=row.prev_hash,
        hash=row.hash,
    )
