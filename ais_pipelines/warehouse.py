"""The analytical warehouse (DuckDB): table layout and the few write patterns we allow.

Plain functions over a DuckDB connection, no Dagster. Two write patterns only:

* ``upsert_bars``: validated bars are inserted or replace the same (symbol, date); nothing is
  ever deleted, so a bad or partial fetch can never lose stored history.
* ``replace_partition``: a decision table's rows for one key (e.g. ``as_of``) are replaced
  atomically, so re-materializing a partition is idempotent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from typing import Any, TypeVar

import duckdb
import pandas as pd

T = TypeVar("T")

BARS_DDL = """
CREATE TABLE IF NOT EXISTS bars (
    symbol VARCHAR NOT NULL,
    date TIMESTAMP NOT NULL,
    open DOUBLE NOT NULL,
    high DOUBLE NOT NULL,
    low DOUBLE NOT NULL,
    close DOUBLE NOT NULL,
    volume DOUBLE NOT NULL,
    adj_close DOUBLE NOT NULL,
    asset_class VARCHAR NOT NULL,
    provider VARCHAR NOT NULL,
    run_id VARCHAR NOT NULL,
    PRIMARY KEY (symbol, date)
)
"""
BAR_COLUMNS = ["symbol", "date", "open", "high", "low", "close", "volume", "adj_close", "asset_class", "provider"]


@dataclass(frozen=True)
class UpsertStats:
    inserted: int
    updated: int
    unchanged: int


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """BEGIN … COMMIT, rolled back on any error: each write pattern is all or nothing."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise


def ensure_bars_table(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(BARS_DDL)


def fetch_one(con: duckdb.DuckDBPyConnection, sql: str, params: Iterable[object] = ()) -> tuple:
    """One row, with the result fully consumed (DuckDB refuses new work on a half-read result)."""
    rows = con.execute(sql, list(params)).fetchall()
    return rows[0] if rows else ()


def table_exists(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    cached = getattr(con, "cached_table_exists", None)  # issue 12: the replay's exact read cache
    if cached is not None:
        return bool(cached(table))
    row = fetch_one(
        con, "SELECT count(*) FROM information_schema.tables WHERE table_name = ? AND table_schema = 'main'", [table]
    )
    return bool(row and row[0])


def upsert_bars(con: duckdb.DuckDBPyConnection, bars: pd.DataFrame, run_id: str) -> UpsertStats:
    """Insert new (symbol, date) rows and replace changed ones; never delete (see module doc)."""
    ensure_bars_table(con)
    if bars.empty:
        return UpsertStats(0, 0, 0)
    incoming = bars[BAR_COLUMNS].assign(run_id=run_id)
    con.register("incoming_bars", incoming)
    try:
        return _upsert_from(con, "incoming_bars")
    finally:
        con.unregister("incoming_bars")


def upsert_staged_bars(con: duckdb.DuckDBPyConnection, staging_table: str) -> UpsertStats:
    """``upsert_bars`` of a staging table (``BAR_COLUMNS`` + ``run_id``) inside DuckDB: the same
    rows and counts without a round trip through pandas (2.5 M rows at 2,000 symbols)."""
    ensure_bars_table(con)
    if not table_exists(con, staging_table) or not int(fetch_one(con, f'SELECT count(*) FROM "{staging_table}"')[0]):
        return UpsertStats(0, 0, 0)
    cols = ", ".join("date::TIMESTAMP AS date" if c == "date" else c for c in BAR_COLUMNS)
    con.execute(f'CREATE OR REPLACE TEMP VIEW incoming_staged AS SELECT {cols}, run_id FROM "{staging_table}"')
    try:
        return _upsert_from(con, "incoming_staged")
    finally:
        con.execute("DROP VIEW IF EXISTS incoming_staged")


def _upsert_from(con: duckdb.DuckDBPyConnection, source: str) -> UpsertStats:
    with transaction(con):
        inserted, updated, unchanged = fetch_one(
            con,
            f"""
            SELECT
              count(*) FILTER (WHERE b.symbol IS NULL),
              count(*) FILTER (WHERE b.symbol IS NOT NULL AND (b.open, b.high, b.low, b.close, b.volume, b.adj_close)
                                 IS DISTINCT FROM (i.open, i.high, i.low, i.close, i.volume, i.adj_close)),
              count(*) FILTER (WHERE b.symbol IS NOT NULL AND (b.open, b.high, b.low, b.close, b.volume, b.adj_close)
                                 IS NOT DISTINCT FROM (i.open, i.high, i.low, i.close, i.volume, i.adj_close))
            FROM {source} i LEFT JOIN bars b ON b.symbol = i.symbol AND b.date = i.date
            """,
        )
        con.execute(f"INSERT OR REPLACE INTO bars BY NAME SELECT * FROM {source}")
    return UpsertStats(int(inserted), int(updated), int(unchanged))


def read_bars(
    con: duckdb.DuckDBPyConnection,
    symbols: Sequence[str] | None = None,
    *,
    end: date | pd.Timestamp | None = None,
    start: date | pd.Timestamp | None = None,
) -> pd.DataFrame:
    """Canonical bars, point in time: nothing dated after ``end`` is read."""
    if not table_exists(con, "bars"):
        return pd.DataFrame(columns=BAR_COLUMNS)
    where, params = [], []
    if symbols is not None:
        where.append("list_contains(?, symbol)")
        params.append(list(symbols))
    if end is not None:
        where.append("date <= ?")
        params.append(pd.Timestamp(end).to_pydatetime())
    if start is not None:
        where.append("date >= ?")
        params.append(pd.Timestamp(start).to_pydatetime())
    sql = f"SELECT {', '.join(BAR_COLUMNS)} FROM bars"
    if where:
        sql += " WHERE " + " AND ".join(where)
    frame = con.execute(sql + " ORDER BY symbol, date", params).df()
    frame["date"] = pd.to_datetime(frame["date"]).astype("datetime64[ns]")
    return frame


def replace_partition(
    con: duckdb.DuckDBPyConnection, table: str, frame: pd.DataFrame, key: str, value: object
) -> int:
    """Atomically replace the rows of ``table`` whose ``key`` equals ``value`` with ``frame``.

    An empty ``frame`` empties the partition; if the table does not exist yet it is still
    created with the frame's columns, so downstream readers (dbt marts) can rely on it.
    """
    defer = getattr(con, "deferred_replace_partition", None)  # issue 12: the replay's write-behind
    if defer is not None:
        return int(defer(table, frame, key, value))
    if frame.empty:
        with transaction(con):
            if table_exists(con, table):
                con.execute(f'DELETE FROM "{table}" WHERE "{key}" = ?', [value])
            else:
                con.register("empty_partition", frame.drop(columns=[key], errors="ignore"))
                try:
                    con.execute(f'CREATE TABLE "{table}" AS SELECT *, CAST(NULL AS DATE) AS "{key}" '
                                "FROM empty_partition LIMIT 0")
                finally:
                    con.unregister("empty_partition")
        return 0
    frame = frame.copy()
    frame[key] = value
    con.register("incoming_partition", frame)
    try:
        if not table_exists(con, table):
            # Created (empty) before the transaction: with CREATE + DELETE + a multi-row-group INSERT in
            # one transaction, DuckDB 2.0 answers later parameterized filters on the table with no rows
            # in the same database instance (found by the 100-symbol replay, issue 12).
            con.execute(f'CREATE TABLE "{table}" AS SELECT * FROM incoming_partition LIMIT 0')
        with transaction(con):
            existing = {r[0]: r[1] for r in con.execute(f"DESCRIBE \"{table}\"").fetchall()}
            for col in frame.columns:
                if col not in existing:  # additive schema evolution only
                    dtype = fetch_one(con, f"SELECT typeof(\"{col}\") FROM incoming_partition LIMIT 1")
                    con.execute(f'ALTER TABLE "{table}" ADD COLUMN "{col}" {dtype[0] if dtype else "VARCHAR"}')
                elif existing[col] in ('"NULL"', "NULL"):
                    # created from an empty first partition without a type: take the first real one
                    dtype = fetch_one(con, f"SELECT typeof(\"{col}\") FROM incoming_partition LIMIT 1")
                    if dtype and dtype[0] != "NULL":
                        con.execute(f'ALTER TABLE "{table}" ALTER "{col}" TYPE {dtype[0]}')
            con.execute(f'DELETE FROM "{table}" WHERE "{key}" = ?', [value])
            con.execute(f'INSERT INTO "{table}" BY NAME SELECT * FROM incoming_partition')
    finally:
        con.unregister("incoming_partition")
    return len(frame)


# --- issue 12: several partitions of one table in one transaction (the replay's batched writes) --


def _plain_columns(frame: pd.DataFrame) -> bool:
    """Columns DuckDB types from the pandas dtype alone (an object column only when it holds text)."""
    for col in frame.columns:
        if frame[col].dtype == object and pd.api.types.infer_dtype(frame[col], skipna=True) not in ("string", "empty"):
            return False
    return True


def replace_partitions(con: duckdb.DuckDBPyConnection, table: str, key: str,
                       partitions: Sequence[tuple[object, pd.DataFrame]]) -> int:
    """``replace_partition`` of each ``(value, frame)`` in order; a run of them in one DELETE +
    INSERT where that provably leaves the same table: the table exists, the run's values are
    distinct and of one type, its frames non-empty with the same columns and dtypes, all already
    in the table with a real type, none holding values whose DuckDB type depends on inference
    (object columns of text only). Returns how many partitions were written in such runs."""
    merged, i, n = 0, 0, len(partitions)
    while i < n:
        value, frame = partitions[i]
        if frame.empty or not table_exists(con, table):
            replace_partition(con, table, frame, key, value)  # creates the table or empties one partition
            i += 1
            continue
        j, seen = i + 1, {value}
        while j < n:
            v, f = partitions[j]
            if (v in seen or type(v) is not type(value) or f.empty or list(f.columns) != list(frame.columns)
                    or not f.dtypes.equals(frame.dtypes)):
                break
            seen.add(v)
            j += 1
        run = partitions[i:j]
        if len(run) > 1 and _mergeable(con, table, key, run):
            _insert_run(con, table, key, run)
            merged += len(run)
        else:
            for v, f in run:
                replace_partition(con, table, f, key, v)
        i = j
    return merged


def _mergeable(con: duckdb.DuckDBPyConnection, table: str, key: str,
               run: Sequence[tuple[object, pd.DataFrame]]) -> bool:
    existing = {r[0]: r[1] for r in con.execute(f'DESCRIBE "{table}"').fetchall()}
    cols = [c for c in run[0][1].columns if c != key]
    # A column the table holds without a type (every value so far NULL) stays so while the run
    # holds only None there (objects DuckDB types NULL); replace_partition would type it from the
    # first typed column (a float NaN is DOUBLE, a pandas string NA is VARCHAR).
    return key in existing and all(c in existing and (existing[c] not in ('"NULL"', "NULL") or all(
        _only_none(f[c]) for _, f in run)) for c in cols) and all(_plain_columns(f) for _, f in run)


def _only_none(column: pd.Series) -> bool:
    return column.dtype == object and all(v is None for v in column)


def _insert_run(con: duckdb.DuckDBPyConnection, table: str, key: str,
                run: Sequence[tuple[object, pd.DataFrame]]) -> None:
    both = pd.concat([f.assign(**{key: v}) for v, f in run], ignore_index=True)
    con.register("incoming_partitions", _as_arrow(both))
    try:
        with transaction(con):
            con.execute(f'DELETE FROM "{table}" WHERE list_contains(?, "{key}")', [[v for v, _ in run]])
            con.execute(f'INSERT INTO "{table}" BY NAME SELECT * FROM incoming_partitions')
    finally:
        con.unregister("incoming_partitions")


def _as_arrow(frame: pd.DataFrame) -> Any:
    """The frame as an Arrow table where pyarrow converts it (DuckDB scans Arrow text columns
    ~3x faster than pandas objects; the INSERT casts to the table's types either way, and both
    store NaN as NULL); else the frame."""
    import pyarrow as pa

    try:
        return pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowException, TypeError, ValueError):
        return frame


def append_rows(con: duckdb.DuckDBPyConnection, table: str, frame: pd.DataFrame) -> int:
    """Append-only tables (ingestion log, rejects): create on first use, then insert by name."""
    if frame.empty:
        return 0
    con.register("incoming_rows", frame)
    try:
        if not table_exists(con, table):
            con.execute(f'CREATE TABLE "{table}" AS SELECT * FROM incoming_rows')
        else:
            con.execute(f'INSERT INTO "{table}" BY NAME SELECT * FROM incoming_rows')
    finally:
        con.unregister("incoming_rows")
    return len(frame)


def read_table(
    con: duckdb.DuckDBPyConnection, table: str, where: str = "", params: Iterable[object] = ()
) -> pd.DataFrame:
    if not table_exists(con, table):
        return pd.DataFrame()
    cached = getattr(con, "cached_read_table", None)  # issue 12: ais_pipelines.replay_store (exact)
    if cached is not None:
        return cached(table, where, params)
    return select_table(con, table, where, params)


def derived(con: duckdb.DuckDBPyConnection, name: str, tables: Iterable[str], args: tuple[object, ...],
            build: Callable[[], T]) -> T:
    """``build()`` — a pure function of what it reads from ``tables`` — computed once per state
    of those tables on the replay's connection (``replay_store``); on any other, every call."""
    memo = getattr(con, "derived", None)
    return build() if memo is None else memo(name, tuple(tables), args, build)


def select_table(con: duckdb.DuckDBPyConnection, table: str, where: str = "",
                 params: Iterable[object] = ()) -> pd.DataFrame:
    """``SELECT *`` of an existing table, optionally filtered: the one query behind ``read_table``."""
    sql = f'SELECT * FROM "{table}"' + (f" WHERE {where}" if where else "")
    return con.execute(sql, list(params)).df()


# --- tables that must exist with their schema even when empty (issue 13) -------------------
# Readers (dbt marts, `ais quality show`, reports) query them unconditionally: an empty night
# must leave an empty table, not a missing one.
TABLE_SCHEMAS: dict[str, dict[str, str]] = {
    "bar_rejects": {
        "symbol": "VARCHAR", "date": "VARCHAR", "reason_code": "VARCHAR", "detail": "VARCHAR",
        "source": "VARCHAR", "provider": "VARCHAR", "run_id": "VARCHAR", "ingested_at": "TIMESTAMP",
    },
    "ingestion_log": {
        "symbol": "VARCHAR", "asset_class": "VARCHAR", "calendar": "VARCHAR", "provider": "VARCHAR",
        "status": "VARCHAR", "reason_code": "VARCHAR", "detail": "VARCHAR", "requested_start": "VARCHAR",
        "requested_end": "VARCHAR", "rows_received": "BIGINT", "rows_valid": "BIGINT",
        "rows_rejected": "BIGINT", "raw_path": "VARCHAR", "run_id": "VARCHAR", "ingested_at": "TIMESTAMP",
        "as_of": "DATE",
    },
    "quality_flags": {
        "as_of": "DATE", "symbol": "VARCHAR", "session": "DATE", "flag": "VARCHAR", "reason_code": "VARCHAR",
        "value": "DOUBLE", "detail": "VARCHAR",
    },
}


def ensure_table(con: duckdb.DuckDBPyConnection, table: str) -> None:
    """Create one of ``TABLE_SCHEMAS`` if it does not exist yet (no-op otherwise)."""
    cols = ", ".join(f'"{c}" {t}' for c, t in TABLE_SCHEMAS[table].items())
    con.execute(f'CREATE TABLE IF NOT EXISTS "{table}" ({cols})')
