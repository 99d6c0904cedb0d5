"""The replay's warehouse connection: table reads answered from memory until the table is
written (issue 12). No Dagster.

The nightly and intraday steps read their inputs through :func:`ais_pipelines.warehouse.read_table`
and :func:`~ais_pipelines.warehouse.table_exists` — the same step reads the same partition
several times a night (scenarios three times, the regime four, the quality table five) and asks
whether a table exists before nearly every read and write (~100 catalog queries a session, each
a scan of ``information_schema``). :class:`ReadCachingWarehouse` wraps the replay's DuckDB
connection and is passed to the same step functions in its place (the live assets pass the
plain connection: nothing changes for them). It is exact by construction:

* a cached read is the frame DuckDB returned for the same table, filter and parameters, handed
  out as a copy, and dropped as soon as any statement through this connection names the table
  in a write (``INSERT`` / ``DELETE`` / ``UPDATE``);
* a ``CREATE`` / ``DROP`` / ``ALTER`` of one named table or view drops that relation's reads,
  those of the views made here and the table list (``CREATE TABLE IF NOT EXISTS`` of a table
  that exists changes nothing); ``register`` / ``unregister`` (registered frames are tables to
  ``information_schema``) drop that name's reads; any other statement that is not a read
  (``ROLLBACK``, ``ATTACH``, ``COPY``, ``CREATE INDEX`` …) drops every cached read and the list.

Writes are held in memory (write-behind): a step's ``replace_partition`` is queued per table and
made — in the order it was made, as one DELETE + INSERT per run of partitions where
:func:`ais_pipelines.warehouse.replace_partitions` proves that equal — as soon as anything reads
or names the table (a read, a SQL statement naming it, a registered frame of its name), before
any other DDL or connection call, every ``FLUSH_EVERY`` sessions and at the end (persisting the
warehouse). So every read sees every write made before it, and the warehouse (and the
track-record tables and marts built from it) is the one a plain connection leaves; only tables no
step reads back until the end (decisions, rule hits, orders, fills, the execution context …) are
written in batches. A write that fails would fail at the flush, not at the step.

A read of one held partition (``key = ?``, the partition's last held write) is answered without
writing anything: the held frame as the table read would return it — each column in the table's
order and type, as ``INSERT ... BY NAME`` would store it (absent columns NULL, the key the read's
value) — converted by pandas where that is an identity or exact (:func:`_as_read`), else by
DuckDB's ``CAST``s of the held frame. So the big partitions the next step reads (scenarios,
forecasts, the regime) stay held for the batched write. Where that cannot be proven (the table
does not exist yet, a column the table lacks, a typed value in a column without a type) the
table is flushed and queried. ``verify=True`` (or ``AIS_REPLAY_STORE_VERIFY=1``) checks every such read against the
flushed table read (the tests run replays so).
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Callable, Iterable
from datetime import date, datetime
from typing import Any

import numpy as np
import pandas as pd

_READS = frozenset({"SELECT", "DESCRIBE"})
_ROW_WRITES = frozenset({"INSERT", "DELETE", "UPDATE"})
_TRANSACTION = frozenset({"BEGIN", "COMMIT"})
_FIRST_WORD = re.compile(r"\s*(\w+)")
# Statements that name every table they read or change (a view is flushed around: it may not).
_NAMING = frozenset({"SELECT", "DESCRIBE", "INSERT", "DELETE", "UPDATE", "CREATE", "DROP", "ALTER"})
# catalog queries that list tables or columns (pragma_database_list, asked per bars read, does not)
_CATALOG = re.compile(r"\binformation_schema\b|\bsqlite_master\b|\bduckdb_(?:tables|views|columns|constraints|"
                      r"indexes|dependencies|databases)\b|\bpragma_(?!database_list\b)", re.IGNORECASE)
_KEY_EQUALS = re.compile(r'\s*"?(\w+)"?\s*=\s*\?\s*')
_ONE_RELATION_DDL = re.compile(
    r'\s*(?:CREATE\s+(?:OR\s+REPLACE\s+)?(?:TEMP(?:ORARY)?\s+)?(?:TABLE|VIEW)(?P<if_absent>\s+IF\s+NOT\s+EXISTS)?'
    r'|DROP\s+(?:TABLE|VIEW)(?:\s+IF\s+EXISTS)?|ALTER\s+TABLE)\s+"?(?P<name>\w+)"?(?:[\s(;]|$)', re.I)
_UNTYPED = frozenset({'"NULL"', "NULL"})
_VIEW_NAME = re.compile(r"\bVIEW\s+(?:IF\s+(?:NOT\s+)?EXISTS\s+)?\"?(\w+)", re.IGNORECASE)


def _names(table: str, sql: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(table)}(?!\w)", sql, re.IGNORECASE) is not None


class ReadCachingWarehouse:
    """A DuckDB connection (everything else is forwarded) with exact read and table-list caches."""

    def __init__(self, con: Any, verify: bool | None = None, record: bool = False) -> None:
        self._log: list[tuple[Any, ...]] | None = [] if record else None  # the writes, for replay_feed
        self.verify = os.environ.get("AIS_REPLAY_STORE_VERIFY") == "1" if verify is None else verify
        self._schemas: dict[str, dict[str, str]] = {}  # table → column → DuckDB type (DESCRIBE)
        self._text: Any = None
        self._times: dict[str, Any] | None = None
        self._pending: dict[str, list[tuple[str, object, pd.DataFrame]]] = {}  # table → (key, value, frame)
        self.con = con
        self._tables: set[str] | None = None  # the tables of the main schema, registered frames aside
        self._registered: set[str] = set()
        self._views: dict[str, str] = {}  # view → its definition, for views created through this connection
        self._reads: dict[tuple[str, str, tuple[Any, ...]], pd.DataFrame] = {}
        self._derived: dict[tuple[str, tuple[Any, ...]], tuple[frozenset[str], Any]] = {}
        self.hits = 0
        self.misses = 0
        self.writes = 0
        self.merged = 0  # partitions written in batches of one DELETE + INSERT
        self.flushes = 0
        self.held_reads = 0  # reads answered from a held partition
        self.cast_reads = 0  # … of which through DuckDB's casts (not shown equal in pandas)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("con", "_pending"):
            raise AttributeError(name)
        self.flush()  # anything else the connection does (close, sql, …) sees every write
        return getattr(self.con, name)

    # --- write-behind ----------------------------------------------------------------------

    def deferred_replace_partition(self, table: str, frame: pd.DataFrame, key: str, value: object,
                                   copy: bool = True) -> int:
        self._drop_reads({table})
        held = frame.copy() if copy else frame
        self._pending.setdefault(table, []).append((key, value, held))
        self.writes += 1
        if self._log is not None:
            self._log.append(("partition", table, key, value, held))
        return len(frame)

    # --- the write log: another connection made equal by the same writes in the same order ----

    def take_log(self) -> list[tuple[Any, ...]]:
        """The writes made through this connection since the last call (``record=True``): held
        partitions, statements other than reads, registered and unregistered frames."""
        if self._log is None:
            raise RuntimeError("this connection does not record its writes (record=True)")
        log, self._log = self._log, []
        return log

    def apply_log(self, log: Iterable[tuple[Any, ...]]) -> None:
        """Make the writes of ``take_log`` here, in their order, through the same methods."""
        for op in log:
            if op[0] == "partition":
                self.deferred_replace_partition(op[1], op[4], op[2], op[3], copy=False)
            elif op[0] == "execute":
                self.execute(op[1], op[2])
            elif op[0] == "register":
                self.register(op[1], op[2])
            else:
                self.unregister(op[1])

    def flush(self, tables: Iterable[str] | None = None) -> None:
        """Write the held partitions (of ``tables``, default all) in the order they were made."""
        from ais_pipelines.warehouse import replace_partitions

        names = list(self._pending) if tables is None else [t for t in tables if t in self._pending]
        for table in names:
            ops = self._pending.pop(table)
            self.flushes += 1
            known = self._schemas.get(table)
            if known is None or any(t in _UNTYPED for t in known.values()) or any(
                    c not in known for _, _, f in ops for c in f.columns):
                self._schemas.pop(table, None)  # the write may add or type columns
            created = table not in (self._tables or ())
            start = 0
            while start < len(ops):  # runs of one partition key, in order
                end = start
                while end < len(ops) and ops[end][0] == ops[start][0]:
                    end += 1
                self.merged += replace_partitions(_Known(self.con, created), table, ops[start][0],
                                                  [(v, f) for _, v, f in ops[start:end]])
                start = end
            self._drop_reads({table})
            if created:
                self._tables = None

    # --- the seam used by ais_pipelines.warehouse ------------------------------------------

    def cached_table_exists(self, table: str) -> bool:
        if table in self._registered or table in self._pending:  # a held write creates its table
            return True
        return table in self._listed()

    def _listed(self) -> set[str]:
        """The main schema's tables (registered frames aside), listed once until a DDL."""
        if self._tables is None:
            rows = self.con.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
                                    ).fetchall()
            names = {str(r[0]) for r in rows}
            if self._registered & names:  # listed while registered: which is a table is unknown
                return names - self._registered
            self._tables = names - self._registered
        return self._tables

    def cached_read_table(self, table: str, where: str, params: Iterable[object]) -> pd.DataFrame:
        values = tuple(params)
        try:
            key = (table, where, values)
            hash(key)
        except TypeError:
            self.flush([table])  # every read sees the held writes, cacheable or not
            return self._query(table, where, values)
        frame = self._reads.get(key)
        if frame is None:
            held = self._held_partition(table, where, values)
            if held is not None:
                self.held_reads += 1
                frame = self._reads[key] = held
                return frame.copy()
            self.flush([table])
            self.misses += 1
            frame = self._reads[key] = self._query(table, where, values)
        else:
            self.hits += 1
        return frame.copy()

    def _held_partition(self, table: str, where: str, values: tuple[Any, ...]) -> pd.DataFrame | None:
        """The table read of partition ``key = value`` when it is held, selected from the held
        frame cast to the table's types; None when that is not provably the same."""
        ops, m = self._pending.get(table), _KEY_EQUALS.fullmatch(where)
        if not ops or m is None or len(values) != 1 or table in self._registered:
            return None
        key, value = m.group(1), values[0]
        if any(k != key for k, _, _ in ops):
            return None
        frames = [f for _, v, f in ops if type(v) is type(value) and v == value]
        if not frames:
            return None
        schema = self._schema(table)
        frame = frames[-1]
        if (schema is None or key not in schema or schema[key] in _UNTYPED
                or any(c not in schema for c in frame.columns)
                or any(t in _UNTYPED and c in frame.columns and frame[c].notna().any() for c, t in schema.items())):
            return None  # (a typed value in a column without a type: the write types it)
        out = _as_read(frame, schema, key, value, self._text_dtype(), self._time_dtypes())
        if out is None:  # a column pandas cannot be shown to convert as DuckDB does: DuckDB casts it
            self.cast_reads += 1
            cols = ", ".join(
                f'NULL AS "{c}"' if t in _UNTYPED else f'CAST(? AS {t}) AS "{c}"' if c == key else
                f'CAST("{c}" AS {t}) AS "{c}"' if c in frame.columns else f'CAST(NULL AS {t}) AS "{c}"'
                for c, t in schema.items())
            self.con.register("held_partition_read", frame)
            try:
                out = self.con.execute(f"SELECT {cols} FROM held_partition_read", [value]).df()
            finally:
                self.con.unregister("held_partition_read")
        if self.verify:
            self.flush([table])
            pd.testing.assert_frame_equal(out, self._query(table, where, values), check_exact=True,
                                          obj=f"held read of {table} {where} {value!r}")
        return out

    def _text_dtype(self) -> Any:
        if self._text is None:  # the pandas dtype DuckDB hands VARCHAR out as
            self._text = self.con.execute("SELECT 'a'::VARCHAR AS s").df()["s"].dtype
        return self._text

    def _time_dtypes(self) -> dict[str, Any]:
        if self._times is None:  # the pandas dtype DuckDB hands each date / time type out as
            row = self.con.execute("SELECT " + ", ".join(f"CAST(TIMESTAMP '2000-01-01' AS {t}) AS {t}"
                                                         for t in _TIMES)).df()
            self._times = {t: row[t].dtype for t in _TIMES}
        return self._times

    def _schema(self, table: str) -> dict[str, str] | None:
        if table not in self._schemas:
            if table not in self._listed():
                return None
            self._schemas[table] = {str(r[0]): str(r[1]) for r in self.con.execute(f'DESCRIBE "{table}"').fetchall()}
        return self._schemas[table]

    def derived(self, name: str, tables: Iterable[str], args: tuple[Any, ...], build: Callable[[], Any]) -> Any:
        """``build()``, a pure function of ``tables``' reads, computed once until one of them is
        written (as a cached read is); a deep copy is handed out."""
        key = (name, args)
        entry = self._derived.get(key)
        if entry is None:
            entry = self._derived[key] = (frozenset(tables), build())
        return copy.deepcopy(entry[1])

    def _query(self, table: str, where: str, values: tuple[Any, ...]) -> pd.DataFrame:
        from ais_pipelines.warehouse import select_table

        return select_table(self.con, table, where, values)

    # --- the connection API, with invalidation ---------------------------------------------

    def execute(self, sql: str, parameters: Any = None) -> Any:
        m = _FIRST_WORD.match(sql)
        word = m.group(1).upper() if m else ""
        self._flush_for(sql, word)
        self._invalidate(sql, word)
        result = self.con.execute(sql) if parameters is None else self.con.execute(sql, parameters)
        if self._log is not None and word not in _READS:  # a statement that failed is not logged
            self._log.append(("execute", sql, copy.deepcopy(parameters)))
        return result

    def _flush_for(self, sql: str, word: str) -> None:
        """Before a statement: the held writes of every table it names, directly or through a view
        made here; all of them before one that can see tables without naming them (ATTACH / COPY,
        PRAGMA, the catalog, ROLLBACK …)."""
        if word in _TRANSACTION:
            return
        if self._creates_nothing(sql, word):
            return  # its held writes stay held
        if word not in _NAMING or _CATALOG.search(sql):
            self.flush()
        elif self._pending or self._views:
            texts, seen = [sql], set()
            while texts:  # a view made here reads the tables its definition names
                text = texts.pop()
                for v, definition in self._views.items():
                    if v not in seen and _names(v, text):
                        seen.add(v)
                        texts.append(definition)
                self.flush([t for t in self._pending if _names(t, text)])
        view = _VIEW_NAME.search(sql) if word in ("CREATE", "DROP") else None
        if view and word == "CREATE":
            self._views[view.group(1).lower()] = sql
        elif view:
            self._views.pop(view.group(1).lower(), None)

    def register(self, name: str, frame: Any) -> Any:
        self.flush([t for t in self._pending if t.lower() == name.lower()])
        # A registered frame is a table to information_schema and shadows a table of its name.
        self._drop_reads({name})
        if self._tables is not None and name in self._tables:
            self._tables = None
        self._registered.add(name)
        if self._log is not None:  # a copy: the caller may change the frame once it is registered
            self._log.append(("register", name, frame.copy() if isinstance(frame, pd.DataFrame) else frame))
        return self.con.register(name, frame)

    def unregister(self, name: str) -> Any:
        self._drop_reads({name})
        self._registered.discard(name)
        if self._log is not None:
            self._log.append(("unregister", name))
        return self.con.unregister(name)

    def _creates_nothing(self, sql: str, word: str) -> bool:
        """``CREATE … IF NOT EXISTS`` of a table that exists (an ensure_table): changes nothing."""
        one = _ONE_RELATION_DDL.match(sql) if word == "CREATE" else None
        return bool(one and one.group("if_absent") and one.group("name") not in self._registered
                    and one.group("name") in self._listed())

    def _invalidate(self, sql: str, word: str) -> None:
        if word in _READS or word in _TRANSACTION:
            return
        if word in _ROW_WRITES:
            self._drop_reads({t for t in {k[0] for k in self._reads} if _names(t, sql)})
            return
        if self._creates_nothing(sql, word):
            return
        one = _ONE_RELATION_DDL.match(sql)
        if one:  # changes that table or view only (and what a view made here reads through it)
            name = one.group("name")
            self._drop_reads({name, *self._views})
            self._schemas.pop(name, None)
            self._tables = None
            return
        self._clear()

    def _drop_reads(self, tables: set[str]) -> None:
        if tables:
            self._reads = {k: v for k, v in self._reads.items() if k[0] not in tables}
            self._derived = {k: v for k, v in self._derived.items() if not v[0] & tables}

    def _clear(self) -> None:
        self._tables = None
        self._reads = {}
        self._derived = {}
        self._schemas = {}


_SAME = {("DOUBLE", "float64"), ("BIGINT", "int64"), ("BOOLEAN", "bool")}
_TIMES = ("DATE", "TIMESTAMP", "TIMESTAMP_S", "TIMESTAMP_MS", "TIMESTAMP_NS")


def _exact_times(values: np.ndarray, dtype: Any) -> np.ndarray | None:
    """``values`` (datetime64) in ``dtype``'s unit, or None when that would drop digits."""
    out = values.astype(dtype)
    same = (out == values) | (np.isnat(out) & np.isnat(values))
    return out if bool(same.all()) else None


def _as_read(frame: pd.DataFrame, schema: dict[str, str], key: str, value: object, text: Any,
             times: dict[str, Any]) -> pd.DataFrame | None:
    """``frame`` as DuckDB hands the table's partition back (pandas only), for the conversions
    that are identities or exact: float64 DOUBLE, int64 BIGINT / DOUBLE, bool BOOLEAN, text
    VARCHAR (all NULL: objects None, as DuckDB gives them), datetime64 / dates as DATE or
    TIMESTAMP (``times``: the dtype DuckDB hands each out as), a DATE key. None for anything
    else (the caller lets DuckDB cast it)."""
    n, cols = len(frame), {}
    if n == 0:
        return None  # DuckDB types an empty result's text columns otherwise
    for c, t in schema.items():
        if c == key:
            if t != "DATE" or not isinstance(value, date) or isinstance(value, datetime):
                return None
            cols[c] = np.full(n, np.datetime64(value, "D")).astype(times[t])
            continue
        col = frame[c] if c in frame.columns else None
        if (t in _UNTYPED or t == "VARCHAR") and (col is None or bool(col.isna().all())):
            cols[c] = np.full(n, None, dtype=object)  # DuckDB hands an all-NULL text column out so
            continue
        if col is None:
            return None
        kind = str(col.dtype)
        if (t, kind) in _SAME:
            cols[c] = col.to_numpy(copy=True)
        elif t == "DOUBLE" and kind == "int64" and np.abs(col.to_numpy()).max() < 2**53:
            cols[c] = col.to_numpy(dtype="float64")
        elif t == "VARCHAR" and (isinstance(col.dtype, pd.StringDtype) or (
                kind == "object" and pd.api.types.infer_dtype(col, skipna=True) == "string")) and col.notna().any():
            cols[c] = col.array.copy() if col.dtype == text else col.astype(text).array
        elif t in times and (kind.startswith("datetime64[") or (
                kind == "object" and t == "DATE" and pd.api.types.infer_dtype(col, skipna=True) in ("date", "empty"))):
            stamps = col.to_numpy(dtype="datetime64[ns]") if kind == "object" else col.to_numpy()
            if t == "DATE" and not bool((np.isnat(stamps) | (stamps == stamps.astype("datetime64[D]"))).all()):
                return None  # a time of day DuckDB would cut to the date
            exact = _exact_times(stamps, times[t])
            if exact is None:
                return None
            cols[c] = exact
        else:
            return None
    return pd.DataFrame(cols, index=pd.RangeIndex(n))


class _Known:
    """The raw connection for a flush, answering ``table_exists`` for a table known to exist
    without a catalog scan (a flush only adds tables; the first write of a new one asks DuckDB)."""

    def __init__(self, con: Any, created: bool) -> None:
        self._con, self._asks = con, created

    def cached_table_exists(self, table: str) -> bool:
        if self._asks:
            from ais_pipelines.warehouse import table_exists

            self._asks = not table_exists(self._con, table)
        return not self._asks

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)
