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

Every write still goes to DuckDB when the step makes it, so the warehouse (and the track-record
tables and marts built from it) is the one a plain connection leaves.
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


class ReadCachingWarehouse:
    """A DuckDB connection (everything else is forwarded) with exact read and table-list caches."""

    def __init__(self, con: Any) -> None:
        self.con = con
        self._tables: set[str] | None = None  # the tables of the main schema, registered frames aside
        self._registered: set[str] = set()
        self._reads: dict[tuple[str, str, tuple[Any, ...]], pd.DataFrame] = {}
        self.hits = 0
        self.misses = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.con, name)

    # --- the seam used by ais_pipelines.warehouse ------------------------------------------

    def cached_table_exists(self, table: str) -> bool:
        if table in self._registered:
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
        sql = f'SELECT * FROM "{table}"' + (f" WHERE {where}" if where else "")
        return self.con.execute(sql, list(values)).df()

    # --- the connection API, with invalidation ---------------------------------------------

    def execute(self, sql: str, parameters: Any = None) -> Any:
        self._invalidate(sql)
        return self.con.execute(sql) if parameters is None else self.con.execute(sql, parameters)

    def register(self, name: str, frame: Any) -> Any:
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

    def _invalidate(self, sql: str) -> None:
        m = _FIRST_WORD.match(sql)
        word = m.group(1).upper() if m else ""
        if word in _READS or word in _TRANSACTION:
            return
        if word in _ROW_WRITES:
            self._drop_reads({t for t, _, _ in self._reads if re.search(rf"(?<!\w){re.escape(t)}(?!\w)", sql)})
            return
        self._clear()

    def _drop_reads(self, tables: set[str]) -> None:
        if tables:
            self._reads = {k: v for k, v in self._reads.items() if k[0] not in tables}

    def _clear(self) -> None:
        self._tables = None
        self._reads = {}
