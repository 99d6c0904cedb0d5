"""Order management (§I1–I2): approvals verified, idempotent intents, crash-safe recovery."""

from ais_pipelines.oms.oms import (
    IdempotencyConflictError,
    OrderManagementSystem,
    OrderRefusedError,
    OrderResult,
    OrderSpec,
    RecoveryReport,
    SystemHaltedError,
    client_order_id_for,
    idempotency_key,
    payload_hash,
)

__all__ = [
    "IdempotencyConflictError",
    "OrderManagementSystem",
    "OrderRefusedError",
    "OrderResult",
    "OrderSpec",
    "RecoveryReport",
    "SystemHaltedError",
    "client_order_id_for",
    "idempotency_key",
    "payload_hash",
]
