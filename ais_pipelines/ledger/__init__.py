"""The transactional ledger (§0): orders, fills, approvals, trading state, audit log.

SQLite in WAL mode by default, PostgreSQL by URL; schema managed by alembic migrations that
``upgrade_ledger`` applies programmatically at startup.
"""

from ais_pipelines.ledger.store import (
    DEFAULT_LEDGER_URL,
    ApprovalAlreadyUsedError,
    ApprovalRecord,
    BrokerSyncResult,
    DuplicateOrderError,
    ExecutionEventRecord,
    FillRecord,
    LedgerError,
    LedgerStore,
    OrderEventRecord,
    OrderIntent,
    OrderNotFoundError,
    OrderRecord,
    PositionRecord,
    ReconciliationMismatchError,
    ReviewDecisionError,
    ReviewItem,
    SqlAuditStore,
    StaleOrderStateError,
    create_ledger_engine,
    current_revision,
    head_revision,
    upgrade_ledger,
)

__all__ = [
    "DEFAULT_LEDGER_URL",
    "ApprovalAlreadyUsedError",
    "ApprovalRecord",
    "BrokerSyncResult",
    "DuplicateOrderError",
    "ExecutionEventRecord",
    "FillRecord",
    "LedgerError",
    "LedgerStore",
    "OrderEventRecord",
    "OrderIntent",
    "OrderNotFoundError",
    "OrderRecord",
    "PositionRecord",
    "ReconciliationMismatchError",
    "ReviewDecisionError",
    "ReviewItem",
    "SqlAuditStore",
    "StaleOrderStateError",
    "create_ledger_engine",
    "current_revision",
    "head_revision",
    "upgrade_ledger",
]
