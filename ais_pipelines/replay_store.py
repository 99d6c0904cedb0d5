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
* any other statement that is not a read (``CREATE``, ``DROP``, ``ALTER``, ``ROLLBACK``,
  ``ATTACH``, ``COPY`` …) and every ``register`` / ``unregister`` (registered frames are tables
  to ``information_schema``) drops every cached read and the table list.

Writes are held in memory (write-behind): a step's ``replace_partition`` is queued per table and
made — in the order it was made, as one DELETE + INSERT per run of partitions where
:func:`ais_pipelines.warehouse.replace_partitions` proves that equal — as soon as anything reads
or names the table (a read, a SQL statement naming it, a registered frame of its name), before
any other DDL or connection call, every ``FLUSH_EVERY`` sessions and at the end (persisting the
warehouse). So every read sees every write made before it, and the warehouse (and the
track-record tables and marts built from it) is the one a plain connection leaves; only tables no
step reads back until the end (decisions, rule hits, orders, fills, the execution context …) are
written in batches. A write that fails would fail at the flush, not at the step.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

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
_VIEW_NAME = re.compile(r"\bVIEW\s+(?:IF\s+(?:NOT\s+)?EXISTS\s+)?\"?(\w+)", re.IGNORECASE)


def _names(table: str, sql: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(table)}(?!\w)", sql, re.IGNORECASE) is not None


class ReadCachingWarehouse:
    """A DuckDB connection (everything else is forwarded) with exact read and table-list caches."""

    def __init__(self, con: Any) -> None:
        self._pending: dict[str, list[tuple[str, object, pd.DataFrame]]] = {}  # table → (key, value, frame)
        self.con = con
        self._tables: set[str] | None = None  # the tables of the main schema, registered frames aside
        self._registered: set[str] = set()
        self._views: dict[str, str] = {}  # view → its definition, for views created through this connection
        self._reads: dict[tuple[str, str, tuple[Any, ...]], pd.DataFrame] = {}
        self.hits = 0
        self.misses = 0
        self.writes = 0
        self.merged = 0  # partitions written in batches of one DELETE + INSERT
        self.flushes = 0

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("con", "_pending"):
            raise AttributeError(name)
        self.flush()  # anything else the connection does (close, sql, …) sees every write
        return getattr(self.con, name)

    # --- write-behind ----------------------------------------------------------------------

    def deferred_replace_partition(self, table: str, frame: pd.DataFrame, key: str, value: object) -> int:
        self._drop_reads({table})
        self._pending.setdefault(table, []).append((key, value, frame.copy()))
        self.writes += 1
        return len(frame)

    def flush(self, tables: Iterable[str] | None = None) -> None:
        """Write the held partitions (of ``tables``, default all) in the order they were made."""
        from ais_pipelines.warehouse import replace_partitions

        names = list(self._pending) if tables is None else [t for t in tables if t in self._pending]
        for table in names:
            ops = self._pending.pop(table)
            self.flushes += 1
            created = table not in (self._tables or ())
            start = 0
            while start < len(ops):  # runs of one partition key, in order
                end = start
                while end < len(ops) and ops[end][0] == ops[start][0]:
                    end += 1
                self.merged += replace_partitions(self.con, table, ops[start][0],
                                                  [(v, f) for _, v, f in ops[start:end]])
                start = end
            self._drop_reads({table})
            if created:
                self._tables = None

    # --- the seam used by ais_pipelines.warehouse ------------------------------------------

    def cached_table_exists(self, table: str) -> bool:
        if table in self._registered or table in self._pending:  # a held write creates its table
            return True
        if self._tables is None:
            rows = self.con.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
                                    ).fetchall()
            names = {str(r[0]) for r in rows}
            if self._registered & names:  # listed while registered: which is a table is unknown
                return table in names
            self._tables = names - self._registered
        return table in self._tables

    def cached_read_table(self, table: str, where: str, params: Iterable[object]) -> pd.DataFrame:
        values = tuple(params)
        self.flush([table])  # every read sees the held writes, cacheable or not
        try:
            key = (table, where, values)
            hash(key)
        except TypeError:
            return self._query(table, where, values)
        frame = self._reads.get(key)
        if frame is None:
            self.misses += 1
            frame = self._reads[key] = self._query(table, where, values)
        else:
            self.hits += 1
        return frame.copy()

    def _query(self, table: str, where: str, values: tuple[Any, ...]) -> pd.DataFrame:
        from ais_pipelines.warehouse import select_table

        return select_table(self.con, table, where, values)

    # --- the connection API, with invalidation ---------------------------------------------

    def execute(self, sql: str, parameters: Any = None) -> Any:
        m = _FIRST_WORD.match(sql)
        word = m.group(1).upper() if m else ""
        self._flush_for(sql, word)
        self._invalidate(sql, word)
        return self.con.execute(sql) if parameters is None else self.con.execute(sql, parameters)

    def _flush_for(self, sql: str, word: str) -> None:
        """Before a statement: the held writes of every table it names, directly or through a view
        made here; all of them before one that can see tables without naming them (ATTACH / COPY,
        PRAGMA, the catalog, ROLLBACK …)."""
        if word in _TRANSACTION:
            return
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
        return self.con.register(name, frame)

    def unregister(self, name: str) -> Any:
        self._drop_reads({name})
        self._registered.discard(name)
        return self.con.unregister(name)

    def _invalidate(self, sql: str, word: str) -> None:
        if word in _READS or word in _TRANSACTION:
            return
        if word in _ROW_WRITES:
            self._drop_reads({t for t in {k[0] for k in self._reads} if _names(t, sql)})
            return
        self._clear()

    def _drop_reads(self, tables: set[str]) -> None:
        if tables:
            self._reads = {k: v for k, v in self._reads.items() if k[0] not in tables}

    def _clear(self) -> None:
        self._tables = None
        self._reads = {}
