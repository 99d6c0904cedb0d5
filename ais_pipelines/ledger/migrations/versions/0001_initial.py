"""Initial ledger schema: approvals, review queue, trading state, orders, fills, positions,
execution events, audit log and the embedded paper broker's book.

Written out explicitly (not ``metadata.create_all``) so this revision keeps creating the
same schema after later revisions change the models.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

_ORDER_STATES = "'NEW','SUBMITTED','ACCEPTED','PARTIALLY_FILLED','FILLED','CANCEL_PENDING','CANCELLED','REJECTED','EXPIRED'"


def _ts(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "approvals",
        sa.Column("approval_id", sa.String(64), nullable=False),
        sa.Column("order_payload", sa.JSON(), nullable=False),
        sa.Column("signature", sa.String(128), nullable=False),
        _ts("expires_at"),
        _ts("created_at"),
        _ts("used_at", nullable=True),
        sa.Column("used_by", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("approval_id", name="pk_approvals"),
    )
    op.create_table(
        "review_queue",
        sa.Column("item_id", sa.String(64), nullable=False),
        sa.Column("order_payload", sa.JSON(), nullable=False),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        _ts("created_at"),
        sa.Column("decided_by", sa.String(128), nullable=True),
        _ts("decided_at", nullable=True),
        sa.Column("why", sa.Text(), nullable=True),
        sa.CheckConstraint("status IN ('PENDING','APPROVED','REJECTED')", name="ck_review_queue_status"),
        sa.PrimaryKeyConstraint("item_id", name="pk_review_queue"),
    )
    op.create_index("ix_review_queue_status", "review_queue", ["status"])
    op.create_table(
        "trading_state",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("why", sa.Text(), nullable=False),
        sa.Column("reason_codes", sa.JSON(), nullable=False),
        sa.Column("latched", sa.Boolean(), nullable=False),
        _ts("ts"),
        sa.CheckConstraint("mode IN ('ACTIVE','REDUCING','PAUSED','HALTED')", name="ck_trading_state_mode"),
        sa.PrimaryKeyConstraint("id", name="pk_trading_state"),
    )
    op.create_table(
        "orders",
        sa.Column("client_order_id", sa.String(64), nullable=False),
        sa.Column("idempotency_key", sa.String(128), nullable=False),
        sa.Column("approval_id", sa.String(64), nullable=False),
        sa.Column("payload_hash", sa.String(64), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("side", sa.String(4), nullable=False),
        sa.Column("qty", sa.Float(), nullable=False),
        sa.Column("order_type", sa.String(16), nullable=False),
        sa.Column("limit_price", sa.Float(), nullable=True),
        sa.Column("notional", sa.Float(), nullable=True),
        sa.Column("reduce_only", sa.Boolean(), nullable=False),
        sa.Column("mode", sa.String(8), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("broker_order_id", sa.String(64), nullable=True),
        sa.Column("filled_qty", sa.Float(), nullable=False),
        sa.Column("avg_fill_price", sa.Float(), nullable=True),
        sa.Column("reason_codes", sa.JSON(), nullable=False),
        _ts("created_at"),
        _ts("updated_at"),
        _ts("submitted_at", nullable=True),
        sa.CheckConstraint("side IN ('BUY','SELL')", name="ck_orders_side"),
        sa.CheckConstraint("qty > 0", name="ck_orders_qty_positive"),
        sa.CheckConstraint(f"state IN ({_ORDER_STATES})", name="ck_orders_state"),
        sa.ForeignKeyConstraint(
            ["approval_id"], ["approvals.approval_id"], name="fk_orders_approval_id_approvals"
        ),
        sa.PrimaryKeyConstraint("client_order_id", name="pk_orders"),
        sa.UniqueConstraint("idempotency_key", name="uq_orders_idempotency_key"),
    )
    op.create_index("ix_orders_state", "orders", ["state"])
    op.create_index("ix_orders_approval_id", "orders", ["approval_id"])
    op.create_table(
        "order_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("client_order_id", sa.String(64), nullable=False),
        sa.Column("event", sa.String(20), nullable=False),
        sa.Column("from_state", sa.String(20), nullable=True),
        sa.Column("to_state", sa.String(20), nullable=False),
        sa.Column("reason_codes", sa.JSON(), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=True),
        _ts("ts"),
        sa.ForeignKeyConstraint(
            ["client_order_id"], ["orders.client_order_id"], name="fk_order_events_client_order_id_orders"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_order_events"),
    )
    op.create_index("ix_order_events_client_order_id", "order_events", ["client_order_id"])
    op.create_table(
        "fills",
        sa.Column("fill_id", sa.String(96), nullable=False),
        sa.Column("client_order_id", sa.String(64), nullable=False),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("side", sa.String(4), nullable=False),
        sa.Column("qty", sa.Float(), nullable=False),
        sa.Column("price", sa.Float(), nullable=False),
        sa.Column("fees", sa.Float(), nullable=False),
        _ts("ts"),
        sa.CheckConstraint("qty > 0", name="ck_fills_qty_positive"),
        sa.CheckConstraint("price > 0", name="ck_fills_price_positive"),
        sa.ForeignKeyConstraint(
            ["client_order_id"], ["orders.client_order_id"], name="fk_fills_client_order_id_orders"
        ),
        sa.PrimaryKeyConstraint("fill_id", name="pk_fills"),
    )
    op.create_index("ix_fills_client_order_id", "fills", ["client_order_id"])
    op.create_table(
        "positions",
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("qty", sa.Float(), nullable=False),
        sa.Column("avg_price", sa.Float(), nullable=False),
        sa.Column("realized_pnl", sa.Float(), nullable=False),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("symbol", name="pk_positions"),
    )
    op.create_table(
        "execution_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        _ts("ts"),
        sa.Column("kind", sa.String(48), nullable=False),
        sa.Column("client_order_id", sa.String(64), nullable=True),
        sa.Column("reason_codes", sa.JSON(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_execution_events"),
    )
    op.create_index("ix_execution_events_client_order_id", "execution_events", ["client_order_id"])
    op.create_table(
        "audit_log",
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("ts", sa.String(32), nullable=False),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("subject", sa.String(256), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("reason_codes", sa.JSON(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_audit_log"),
        sa.UniqueConstraint("hash", name="uq_audit_log_hash"),
    )
    op.create_table(
        "paper_account",
        sa.Column("account_id", sa.String(32), nullable=False),
        sa.Column("starting_cash", sa.Float(), nullable=False),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("account_id", name="pk_paper_account"),
    )
    op.create_table(
        "paper_orders",
        sa.Column("broker_order_id", sa.String(64), nullable=False),
        sa.Column("client_order_id", sa.String(64), nullable=False),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("side", sa.String(4), nullable=False),
        sa.Column("qty", sa.Float(), nullable=False),
        sa.Column("order_type", sa.String(16), nullable=False),
        sa.Column("limit_price", sa.Float(), nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("filled_qty", sa.Float(), nullable=False),
        sa.Column("avg_fill_price", sa.Float(), nullable=True),
        sa.Column("reject_reason", sa.String(64), nullable=True),
        sa.Column("reject_detail", sa.Text(), nullable=True),
        _ts("created_at"),
        _ts("updated_at"),
        _ts("expires_at", nullable=True),
        sa.CheckConstraint(f"status IN ({_ORDER_STATES})", name="ck_paper_orders_status"),
        sa.PrimaryKeyConstraint("broker_order_id", name="pk_paper_orders"),
        sa.UniqueConstraint("client_order_id", name="uq_paper_orders_client_order_id"),
    )
    op.create_index("ix_paper_orders_status", "paper_orders", ["status"])
    op.create_table(
        "paper_fills",
        sa.Column("fill_id", sa.String(96), nullable=False),
        sa.Column("broker_order_id", sa.String(64), nullable=False),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("side", sa.String(4), nullable=False),
        sa.Column("qty", sa.Float(), nullable=False),
        sa.Column("price", sa.Float(), nullable=False),
        sa.Column("fees", sa.Float(), nullable=False),
        _ts("ts"),
        sa.ForeignKeyConstraint(
            ["broker_order_id"],
            ["paper_orders.broker_order_id"],
            name="fk_paper_fills_broker_order_id_paper_orders",
        ),
        sa.PrimaryKeyConstraint("fill_id", name="pk_paper_fills"),
    )
    op.create_index("ix_paper_fills_broker_order_id", "paper_fills", ["broker_order_id"])


def downgrade() -> None:
    for index, table in (
        ("ix_paper_fills_broker_order_id", "paper_fills"),
        ("ix_paper_orders_status", "paper_orders"),
        ("ix_execution_events_client_order_id", "execution_events"),
        ("ix_fills_client_order_id", "fills"),
        ("ix_order_events_client_order_id", "order_events"),
        ("ix_orders_approval_id", "orders"),
        ("ix_orders_state", "orders"),
        ("ix_review_queue_status", "review_queue"),
    ):
        op.drop_index(index, table_name=table)
    for table in (
        "paper_fills",
        "paper_orders",
        "paper_account",
        "audit_log",
        "execution_events",
        "positions",
        "fills",
        "order_events",
        "orders",
        "trading_state",
        "review_queue",
        "approvals",
    ):
        op.drop_table(table)
