"""Schema of the transactional ledger (SQLAlchemy Core).

The alembic migrations under ``migrations/versions`` create exactly this schema; a test
compares the migrated database with this metadata so the two cannot drift apart.

Conventions:
* Instants are stored as naive UTC (``UTCDateTime``) so SQLite and PostgreSQL agree; they are
  returned timezone-aware.
* Quantities and prices are double precision: the whole analytical stack is float64, and a
  paper ledger gains nothing from a decimal round trip at this boundary.
* Reason codes are JSON lists of stable strings (``ReasonCode`` values).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware in Python, naive UTC in the database (identical on SQLite and PostgreSQL)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            # A naive instant is ambiguous; refusing it keeps the ledger's timeline honest.
            raise ValueError(f"naive datetime refused by the ledger: {value!r}")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


ORDER_STATES_SQL = "'NEW','SUBMITTED','ACCEPTED','PARTIALLY_FILLED','FILLED','CANCEL_PENDING','CANCELLED','REJECTED','EXPIRED'"

approvals = Table(
    "approvals",
    metadata,
    Column("approval_id", String(64), primary_key=True),
    Column("order_payload", JSON, nullable=False),
    Column("signature", String(128), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    # Single use: set exactly once, by a conditional UPDATE (used_at IS NULL) in one transaction.
    Column("used_at", UTCDateTime(), nullable=True),
    Column("used_by", String(64), nullable=True),
)

review_queue = Table(
    "review_queue",
    metadata,
    Column("item_id", String(64), primary_key=True),
    Column("order_payload", JSON, nullable=False),
    Column("reasons", JSON, nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("decided_by", String(128), nullable=True),
    Column("decided_at", UTCDateTime(), nullable=True),
    Column("why", Text, nullable=True),
    CheckConstraint("status IN ('PENDING','APPROVED','REJECTED')", name="status"),
    Index("ix_review_queue_status", "status"),
)

trading_state = Table(
    "trading_state",
    metadata,
    # Append-only history; the current state is the row with the highest id.
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("mode", String(16), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("why", Text, nullable=False),
    Column("reason_codes", JSON, nullable=False),
    Column("latched", Boolean, nullable=False),
    Column("ts", UTCDateTime(), nullable=False),
    CheckConstraint("mode IN ('ACTIVE','REDUCING','PAUSED','HALTED')", name="mode"),
)

orders = Table(
    "orders",
    metadata,
    Column("client_order_id", String(64), primary_key=True),
    Column("idempotency_key", String(128), nullable=False, unique=True),
    Column("approval_id", String(64), ForeignKey("approvals.approval_id"), nullable=False),
    Column("payload_hash", String(64), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("symbol", String(32), nullable=False),
    Column("side", String(4), nullable=False),
    Column("qty", Float, nullable=False),
    Column("order_type", String(16), nullable=False),
    Column("limit_price", Float, nullable=True),
    Column("notional", Float, nullable=True),
    Column("reduce_only", Boolean, nullable=False),
    Column("mode", String(8), nullable=False),
    Column("state", String(20), nullable=False),
    Column("broker_order_id", String(64), nullable=True),
    Column("filled_qty", Float, nullable=False),
    Column("avg_fill_price", Float, nullable=True),
    Column("reason_codes", JSON, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("submitted_at", UTCDateTime(), nullable=True),
    CheckConstraint("side IN ('BUY','SELL')", name="side"),
    CheckConstraint("qty > 0", name="qty_positive"),
    CheckConstraint(f"state IN ({ORDER_STATES_SQL})", name="state"),
    Index("ix_orders_state", "state"),
    Index("ix_orders_approval_id", "approval_id"),
)

order_events = Table(
    "order_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("client_order_id", String(64), ForeignKey("orders.client_order_id"), nullable=False),
    Column("event", String(20), nullable=False),  # CREATE for the intent row, else an OrderEvent
    Column("from_state", String(20), nullable=True),
    Column("to_state", String(20), nullable=False),
    Column("reason_codes", JSON, nullable=False),
    Column("detail", JSON, nullable=True),
    Column("ts", UTCDateTime(), nullable=False),
    Index("ix_order_events_client_order_id", "client_order_id"),
)

fills = Table(
    "fills",
    metadata,
    # The broker's fill id: a fill seen twice (re-sync, recovery) is recorded once.
    Column("fill_id", String(96), primary_key=True),
    Column("client_order_id", String(64), ForeignKey("orders.client_order_id"), nullable=False),
    Column("symbol", String(32), nullable=False),
    Column("side", String(4), nullable=False),
    Column("qty", Float, nullable=False),
    Column("price", Float, nullable=False),
    Column("fees", Float, nullable=False),
    Column("ts", UTCDateTime(), nullable=False),
    CheckConstraint("qty > 0", name="qty_positive"),
    CheckConstraint("price > 0", name="price_positive"),
    Index("ix_fills_client_order_id", "client_order_id"),
)

positions = Table(
    "positions",
    metadata,
    # Snapshot maintained in the same transaction as each fill (derivable from ``fills``).
    Column("symbol", String(32), primary_key=True),
    Column("qty", Float, nullable=False),
    Column("avg_price", Float, nullable=False),
    Column("realized_pnl", Float, nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

execution_events = Table(
    "execution_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts", UTCDateTime(), nullable=False),
    Column("kind", String(48), nullable=False),
    Column("client_order_id", String(64), nullable=True),
    Column("reason_codes", JSON, nullable=False),
    Column("payload", JSON, nullable=True),
    Index("ix_execution_events_client_order_id", "client_order_id"),
)

# Single flight per session (§I2): at most one execution of an as-of session at a time. The
# primary key is the guard; a dead owner's row is taken over by compare-and-set on ``owner``.
execution_leases = Table(
    "execution_leases",
    metadata,
    Column("session", String(32), primary_key=True),
    Column("owner", String(64), nullable=False),
    Column("owner_pid", Integer, nullable=False),
    Column("owner_host", String(255), nullable=False),
    Column("acquired_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
)

audit_log = Table(
    "audit_log",
    metadata,
    # seq is the primary key (not autoincrement): two writers racing for the same seq cannot
    # both commit, so the hash chain cannot fork.
    Column("seq", Integer, primary_key=True, autoincrement=False),
    # Text exactly as hashed (fixed-width UTC, sorts chronologically): a datetime round trip
    # could reformat it and make an honest record look tampered with.
    Column("ts", String(32), nullable=False),
    Column("event_type", String(64), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("subject", String(256), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("reason_codes", JSON, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False, unique=True),
)

# --- the embedded paper broker's own book (§I4) --------------------------------------------
# Kept apart from the OMS tables on purpose: the broker is the "truth" the OMS reconciles
# against, so it must not share rows with the ledger it is checked against.

paper_account = Table(
    "paper_account",
    metadata,
    Column("account_id", String(32), primary_key=True),
    Column("starting_cash", Float, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
)

paper_orders = Table(
    "paper_orders",
    metadata,
    Column("broker_order_id", String(64), primary_key=True),
    Column("client_order_id", String(64), nullable=False, unique=True),
    Column("symbol", String(32), nullable=False),
    Column("side", String(4), nullable=False),
    Column("qty", Float, nullable=False),
    Column("order_type", String(16), nullable=False),
    Column("limit_price", Float, nullable=True),
    Column("status", String(20), nullable=False),
    Column("filled_qty", Float, nullable=False),
    Column("avg_fill_price", Float, nullable=True),
    Column("reject_reason", String(64), nullable=True),
    Column("reject_detail", Text, nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=True),
    CheckConstraint(f"status IN ({ORDER_STATES_SQL})", name="status"),
    Index("ix_paper_orders_status", "status"),
)

paper_fills = Table(
    "paper_fills",
    metadata,
    Column("fill_id", String(96), primary_key=True),
    Column("broker_order_id", String(64), ForeignKey("paper_orders.broker_order_id"), nullable=False),
    Column("symbol", String(32), nullable=False),
    Column("side", String(4), nullable=False),
    Column("qty", Float, nullable=False),
    Column("price", Float, nullable=False),
    Column("fees", Float, nullable=False),
    Column("ts", UTCDateTime(), nullable=False),
    Index("ix_paper_fills_broker_order_id", "broker_order_id"),
)

ALL_TABLES = tuple(metadata.sorted_tables)
