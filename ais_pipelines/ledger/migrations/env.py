"""Alembic environment for the ledger.

Driven programmatically by ``upgrade_ledger`` (no alembic.ini): the caller passes an open
connection in ``config.attributes["connection"]`` so the migration runs inside the caller's
engine settings (SQLite pragmas, PostgreSQL URL with credentials never copied into an ini).
"""

from __future__ import annotations

from alembic import context

from ais_pipelines.ledger.models import metadata

config = context.config
target_metadata = metadata


def run_migrations_offline() -> None:
    # `alembic upgrade --sql`: emit DDL for a DBA to review instead of executing it.
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("the ledger migrations run through upgrade_ledger(url), which passes a connection")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things in place; batch mode rebuilds tables when needed.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
