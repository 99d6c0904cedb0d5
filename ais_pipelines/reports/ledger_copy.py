"""Copy the transactional ledger into the analytical warehouse, so dbt can model it (§K1).

Plain SQLAlchemy + DuckDB, no Dagster. Every ledger table ``t`` becomes ``ledger_<t>`` in the
warehouse's ``main`` schema, replaced whole: the ledger is read in one transaction (one
consistent snapshot) and every warehouse table is replaced in one DuckDB transaction, so a
reader never sees orders from one moment and fills from another.

Conventions of the copy (documented in ``docs/reports.md``):

* instants are naive **UTC** ``TIMESTAMP`` (the ledger's own convention);
* JSON columns (payloads, reason codes) are kept as canonical JSON text (``VARCHAR``): the
  staging models parse them, and the copy never has to guess a shape;
* a table the ledger does not have yet (an older or empty ledger) is still created, empty,
  with the columns of ``ledger.models``, so the dbt sources always resolve;
* ``ledger_fill_pnl`` is derived in the same transaction with ``core.accounting.fill_pnl``
  (position, average cost and realized P&L after every fill) — average-cost accounting lives
  in one place, and the ``pnl_history`` mart aggregates it instead of re-implementing it;
* ``ledger_snapshot_meta`` records, per table, the row count and when it was copied.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import sqlalchemy as sa
from sqlalchemy import Engine

from ais_pipelines.core.accounting import FILL_PNL_COLUMNS, AccountingError, fill_pnl
from ais_pipelines.ledger import models as m
from ais_pipelines.warehouse import transaction

LEDGER_TABLES: tuple[str, ...] = (
    "orders",
    "order_events",
    "fills",
    "positions",
    "approvals",
    "review_queue",
    "trading_state",
    "execution_events",
    "audit_log",
    "paper_account",
)
PREFIX = "ledger_"
FILL_PNL_TABLE = "ledger_fill_pnl"
META_TABLE = "ledger_snapshot_meta"


@dataclass(frozen=True)
class LedgerCopyResult:
    """What one copy did: rows per warehouse table, tables the ledger lacked, accounting errors."""

    rows: dict[str, int]
    missing: tuple[str, ...] = ()
    copied_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    accounting_error: str | None = None

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


def warehouse_table(table: str) -> str:
    return f"{PREFIX}{table}"


def _duck_type(col_type: sa.types.TypeEngine) -> str:
    """The DuckDB type of a (declared or reflected) SQLAlchemy column type."""
    t = col_type
    if isinstance(t, sa.types.TypeDecorator):
        t = t.impl_instance if hasattr(t, "impl_instance") else t.impl
    if isinstance(t, sa.Boolean):
        return "BOOLEAN"
    if isinstance(t, sa.Integer):
        return "BIGINT"
    if isinstance(t, sa.Float | sa.Numeric):
        return "DOUBLE"
    if isinstance(t, sa.DateTime):
        return "TIMESTAMP"
    if isinstance(t, sa.Date):
        return "DATE"
    return "VARCHAR"  # strings, text, JSON (as canonical JSON text)


def _is_json(col_type: sa.types.TypeEngine) -> bool:
    t = col_type.impl_instance if isinstance(col_type, sa.types.TypeDecorator) else col_type
    return isinstance(t, sa.JSON)


def _json_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str | bytes):
        # A JSON column read back as text (some drivers): keep it, normalized if it parses.
        text = value.decode() if isinstance(value, bytes) else value
        try:
            return json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"), default=str)
        except ValueError:
            return text
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _utc_naive(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    if isinstance(value, str) and value:
        ts = pd.Timestamp(value)
        return (ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo else ts).to_pydatetime()
    return value


def _convert(value: Any, duck: str, is_json: bool) -> Any:
    if value is None:
        return None
    if is_json:
        return _json_text(value)
    if duck == "TIMESTAMP":
        return _utc_naive(value)
    if duck == "DATE" and isinstance(value, datetime):
        return value.date()
    if duck == "VARCHAR" and not isinstance(value, str):
        return str(value)
    if duck == "DOUBLE" and isinstance(value, float) and math.isnan(value):
        return None
    return value


def _pandas_column(values: list[Any], duck: str) -> pd.Series:
    if duck == "DOUBLE":
        return pd.Series(values, dtype="float64")
    if duck == "BIGINT":
        return pd.Series(values, dtype="Int64")
    if duck == "BOOLEAN":
        return pd.Series(values, dtype="boolean")
    if duck == "TIMESTAMP":
        return pd.Series(pd.to_datetime(pd.Series(values, dtype="object")), dtype="datetime64[us]")
    return pd.Series(values, dtype="object")


def _read_table(conn: sa.Connection, name: str) -> tuple[list[tuple[str, str]], pd.DataFrame, bool]:
    """Columns [(name, duckdb type)] and rows of one ledger table; declared schema if absent."""
    present = sa.inspect(conn).has_table(name)
    if present:
        table = sa.Table(name, sa.MetaData(), autoload_with=conn)
        declared = m.metadata.tables.get(name)
    else:
        table = m.metadata.tables.get(name)
        declared = table
        if table is None:
            raise KeyError(f"unknown ledger table {name!r} (not in the ledger and not in ledger.models)")
    cols: list[tuple[str, str, bool]] = []
    for c in table.columns:
        # The declared model knows the semantic type (JSON, UTC instants) even where the
        # database reflects plain TEXT/DATETIME (SQLite).
        known = declared.columns.get(c.name) if declared is not None else None
        ctype = known.type if known is not None else c.type
        cols.append((c.name, _duck_type(ctype), _is_json(ctype)))
    if not present:
        frame = pd.DataFrame({n: _pandas_column([], d) for n, d, _ in cols})
        return [(n, d) for n, d, _ in cols], frame, False
    order = [c for c in table.primary_key.columns] or list(table.columns)
    rows = conn.execute(sa.select(table).order_by(*order)).all()
    data = {
        n: _pandas_column([_convert(r[i], d, j) for r in rows], d) for i, (n, d, j) in enumerate(cols)
    }
    return [(n, d) for n, d, _ in cols], pd.DataFrame(data), True


def _fill_pnl_frame(fills: pd.DataFrame) -> tuple[pd.DataFrame, str | None]:
    """Per-fill accounting (``FILL_PNL_COLUMNS``) from the copied fills; empty + error if invalid."""
    empty = pd.DataFrame({c: pd.Series([], dtype="object") for c in FILL_PNL_COLUMNS})
    if fills.empty:
        return empty, None
    f = fills.copy()
    f["ts"] = pd.to_datetime(f["ts"]).dt.tz_localize("UTC")
    try:
        out = fill_pnl(f)
    except AccountingError as exc:
        return empty, str(exc)
    out["ts"] = out["ts"].dt.tz_convert("UTC").dt.tz_localize(None)
    return out, None


FILL_PNL_DDL = [
    ("fill_id", "VARCHAR"), ("client_order_id", "VARCHAR"), ("symbol", "VARCHAR"), ("side", "VARCHAR"),
    ("qty", "DOUBLE"), ("price", "DOUBLE"), ("fees", "DOUBLE"), ("ts", "TIMESTAMP"), ("signed_qty", "DOUBLE"),
    ("cash_flow", "DOUBLE"), ("realized_pnl", "DOUBLE"), ("position_after", "DOUBLE"),
    ("avg_cost_after", "DOUBLE"),
]


def _replace(con: duckdb.DuckDBPyConnection, target: str, columns: Sequence[tuple[str, str]],
             frame: pd.DataFrame) -> int:
    ddl = ", ".join(f'"{n}" {d}' for n, d in columns)
    con.execute(f'CREATE OR REPLACE TABLE "{target}" ({ddl})')
    if frame.empty:
        return 0
    view = f"_incoming_{target}"
    con.register(view, frame)
    try:
        select = ", ".join(f'CAST("{n}" AS {d}) AS "{n}"' for n, d in columns)
        con.execute(f'INSERT INTO "{target}" SELECT {select} FROM "{view}"')
    finally:
        con.unregister(view)
    return len(frame)


def copy_ledger_to_warehouse(
    ledger_engine: Engine,
    duckdb_con: duckdb.DuckDBPyConnection,
    tables: Iterable[str] = LEDGER_TABLES,
    *,
    derive_fill_pnl: bool = True,
    now: datetime | None = None,
) -> LedgerCopyResult:
    """Replace ``ledger_<table>`` in the warehouse with the ledger's current rows (see module doc).

    Reads every table in one ledger transaction (SQLite: the engine's ``BEGIN IMMEDIATE``;
    PostgreSQL: ``REPEATABLE READ``), then writes every warehouse table in one DuckDB
    transaction: all or nothing. Returns rows per warehouse table and the tables the ledger
    lacked (created empty).
    """
    tables = tuple(dict.fromkeys(tables))
    copied_at = (now or datetime.now(UTC)).astimezone(UTC)
    snapshot: dict[str, tuple[list[tuple[str, str]], pd.DataFrame]] = {}
    missing: list[str] = []
    with ledger_engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            for name in tables:
                columns, frame, present = _read_table(conn, name)
                snapshot[name] = (columns, frame)
                if not present:
                    missing.append(name)

    error = None
    pnl = None
    if derive_fill_pnl and "fills" in snapshot:
        pnl, error = _fill_pnl_frame(snapshot["fills"][1])

    rows: dict[str, int] = {}
    with transaction(duckdb_con):
        for name, (columns, frame) in snapshot.items():
            rows[warehouse_table(name)] = _replace(duckdb_con, warehouse_table(name), columns, frame)
        if pnl is not None:
            rows[FILL_PNL_TABLE] = _replace(duckdb_con, FILL_PNL_TABLE, FILL_PNL_DDL, pnl)
        meta = pd.DataFrame(
            {
                "table_name": list(rows),
                "source_table": [t[len(PREFIX):] if t != FILL_PNL_TABLE else "fills (derived)" for t in rows],
                "row_count": pd.Series(list(rows.values()), dtype="Int64"),
                "present_in_ledger": [t[len(PREFIX):] not in missing for t in rows],
                "copied_at": pd.Series([copied_at.replace(tzinfo=None)] * len(rows), dtype="datetime64[us]"),
            }
        )
        _replace(duckdb_con, META_TABLE, [("table_name", "VARCHAR"), ("source_table", "VARCHAR"),
                                          ("row_count", "BIGINT"), ("present_in_ledger", "BOOLEAN"),
                                          ("copied_at", "TIMESTAMP")], meta)
    return LedgerCopyResult(rows=rows, missing=tuple(missing), copied_at=copied_at, accounting_error=error)


def ledger_read_engine(url: str) -> Engine:
    """An engine to read the ledger at ``url``: no migration, nothing created. A SQLite ledger
    that does not exist yet reads as an empty database (every table lands empty)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import StaticPool

    from ais_pipelines.ledger import create_ledger_engine

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:") and \
            not Path(parsed.database).exists():
        return sa.create_engine("sqlite://", poolclass=StaticPool)
    return create_ledger_engine(url)


def snapshot_ledger(ledger_url: str, warehouse_path: str | Path) -> LedgerCopyResult:
    """Copy the ledger at ``ledger_url`` into the warehouse file (what ``ais report`` does first).
    Needs the warehouse's write lock: not while a run holds it."""
    engine = ledger_read_engine(ledger_url)
    con = duckdb.connect(str(warehouse_path))
    try:
        return copy_ledger_to_warehouse(engine, con)
    finally:
        con.close()
        engine.dispose()


def session_date(ts: datetime | pd.Timestamp, tz: str = "America/New_York") -> date:
    """The market-local calendar day of a UTC instant (naive = UTC), as the marts compute it."""
    t = pd.Timestamp(ts)
    t = t.tz_localize("UTC") if t.tzinfo is None else t
    return t.tz_convert(tz).date()
