"""Alembic migrations of the ledger; applied by ``ais_pipelines.ledger.upgrade_ledger``."""
