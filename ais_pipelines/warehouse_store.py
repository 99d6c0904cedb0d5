"""The shared warehouse store: Parquet files that several processes can write at once (issue 15).

The DuckDB file is one writer at a time. For symbol shards run in parallel processes (or pods)
the warehouse can instead live in a directory of Parquet files, one directory per table, read
and written through an ordinary DuckDB connection, so the stage functions do not change:

* ``<table>/main.parquet`` (+ ``main.json``: the table's DDL and the overlays it has absorbed):
  the table as the last *main* writer left it.
* ``<table>/shard-<k>.ins.parquet`` / ``shard-<k>.del.parquet`` (+ ``shard-<k>.json``): the rows
  shard ``k`` inserted into and deleted from ``main`` (an overlay).

A **shard connection** (``shard=k``) sees ``main`` with its own overlay applied, never another
shard's, so two shards replacing the same partition (``replace_partition`` of ``as_of = D``)
cannot delete each other's rows; at close it rewrites only its own overlay. A **main
connection** (``shard=None``) sees ``main`` with every overlay applied, and at close writes back
every table that changed (or had overlays) and retires the overlays it absorbed: that is the
fan-in. Main connections are exclusive (a lock file), shard connections share it; every file is
written to a temporary name and renamed, so readers never see half a file. A step that raises
writes nothing (its connection is discarded).

It needs POSIX rename and ``flock``: a local disk, or on a cluster a ReadWriteMany volume
(docs/deployment.md; object storage proper would need conditional writes instead). No Dagster here.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from ais_pipelines.warehouse_location import configured_store

MAIN = "main"
BASE_SCHEMA = "ais_store"  # a shard connection's views of ``main`` as loaded (the diff base)
LOCK_FILE = ".lock"

_held = threading.local()  # main lock already held by this thread (nested connections)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{path.name}:{st.st_mtime_ns}:{st.st_size}"


def _write_atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _copy_atomic(con: duckdb.DuckDBPyConnection, select_sql: str, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    con.execute(f"COPY ({select_sql}) TO {_lit(tmp)} (FORMAT parquet)")
    os.replace(tmp, path)


@dataclass
class _TableState:
    fingerprint: tuple | None = None
    overlays: list[Path] = field(default_factory=list)  # overlay files applied at open (main only)


def _ddl(con: duckdb.DuckDBPyConnection, table: str) -> str:
    rows = con.execute("SELECT sql FROM duckdb_tables() WHERE schema_name = 'main' AND table_name = ?",
                       [table]).fetchall()
    return str(rows[0][0])


def _columns(con: duckdb.DuckDBPyConnection, table: str, schema: str = "main") -> list[str]:
    rows = con.execute("SELECT column_name FROM duckdb_columns() WHERE schema_name = ? AND table_name = ? "
                       "ORDER BY column_index", [schema, table]).fetchall()
    return [r[0] for r in rows]


def _fingerprints(con: duckdb.DuckDBPyConnection, tables: list[str]) -> dict[str, tuple]:
    """Per table, an order-independent content hash (row count, sum of row hashes) and its DDL,
    in one statement (a connection is opened and closed once per step and check)."""
    if not tables:
        return {}
    cols: dict[str, list[str]] = {}
    for t, c in con.execute("SELECT table_name, column_name FROM duckdb_columns() WHERE schema_name = 'main' "
                            "ORDER BY table_name, column_index").fetchall():
        cols.setdefault(t, []).append(c)
    ddls = dict(con.execute("SELECT table_name, sql FROM duckdb_tables() WHERE schema_name = 'main'").fetchall())
    parts = [f"SELECT {i} AS i, count(*) AS n, coalesce(sum(hash({', '.join(_q(c) for c in cols[t])})::HUGEINT), 0) "
             f"AS h FROM {_q(t)}" for i, t in enumerate(tables)]
    rows = con.execute(" UNION ALL ".join(parts)).fetchall()
    return {tables[i]: (int(n), int(h), str(ddls[tables[i]])) for i, n, h in rows}


def _tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    rows = con.execute("SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main' AND NOT temporary "
                       "ORDER BY 1").fetchall()
    return [r[0] for r in rows]


def _meta(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _overlay_names(table_dir: Path, shard: int | None) -> list[str]:
    """Overlay writers present for a table: one shard's, or all of them (main)."""
    names = sorted({p.name.split(".")[0] for p in table_dir.glob("shard-*.json")})
    return names if shard is None else [n for n in names if n == f"shard-{shard}"]


class ParquetWarehouse:
    """One connection's view of the store; use :func:`parquet_warehouse`."""

    def __init__(self, root: Path, shard: int | None) -> None:
        self.root, self.shard = root, shard
        self.writer = MAIN if shard is None else f"shard-{shard}"
        self.con = duckdb.connect()
        self.state: dict[str, _TableState] = {}
        self.pins: list[Path] = []

    # --- open --------------------------------------------------------------------------------
    def load(self, fingerprints: bool = True) -> None:
        """``fingerprints=False``: a read-only view, which never persists, skips hashing every table."""
        if self.shard is not None:
            self.con.execute(f"CREATE SCHEMA {BASE_SCHEMA}")
        for table_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            self._load_table(table_dir)
        if fingerprints:
            for table, fp in _fingerprints(self.con, list(self.state)).items():
                self.state[table].fingerprint = fp

    def _load_table(self, table_dir: Path) -> None:
        table = table_dir.name
        main_meta = _meta(table_dir / "main.json")
        consumed = set(main_meta.get("consumed", []))
        writers = []
        for name in _overlay_names(table_dir, self.shard):
            files = [table_dir / f"{name}.{part}" for part in ("json", "ins.parquet", "del.parquet")]
            if all(f.exists() for f in files) and _stamp(files[0]) not in consumed:
                writers.append((name, files))
        main_file = table_dir / "main.parquet"
        if not main_meta and not writers:
            return
        # the newest DDL wins (a writer may have added a column); main's otherwise
        ddls = [(table_dir / "main.json", main_meta)] if main_meta else []
        ddls += [(f[0], _meta(f[0])) for _, f in writers]
        ddl = max(ddls, key=lambda m: m[0].stat().st_mtime_ns)[1]["ddl"]
        self.con.execute(ddl)
        cols = _columns(self.con, table)
        sel = ", ".join(_q(c) for c in cols)
        have_main = bool(main_meta) and main_file.exists()
        if have_main and self.shard is not None:
            # a shard's diff base is main as loaded: pinned by a hard link (free), since a main writer
            # may replace main.parquet while the shard works
            pin = table_dir / f".{self.writer}.base.{os.getpid()}.parquet"
            pin.unlink(missing_ok=True)
            os.link(main_file, pin)
            self.pins.append(pin)
            main_file = pin
        main_sql = f"SELECT * FROM read_parquet({_lit(main_file)})" if have_main else None
        if have_main:
            dels = [f[2] for _, f in writers]
            base = main_sql
            if dels:
                files = ", ".join(_lit(p) for p in dels)
                # a column a writer added after main was written reads as NULL on both sides
                have = {r[0] for r in self.con.execute(f"DESCRIBE {main_sql}").fetchall()}
                main_sel = ", ".join(_q(c) if c in have else f"NULL AS {_q(c)}" for c in cols)
                base = (f"SELECT {main_sel} FROM ({main_sql}) EXCEPT ALL "
                        f"SELECT {sel} FROM read_parquet([{files}], union_by_name = true)")
            self.con.execute(f"INSERT INTO {_q(table)} BY NAME {base}")
        if writers:
            files = ", ".join(_lit(f[1]) for _, f in writers)
            self.con.execute(f"INSERT INTO {_q(table)} BY NAME "
                             f"SELECT * FROM read_parquet([{files}], union_by_name = true)")
        if self.shard is None:
            self.state[table] = _TableState(overlays=[p for _, f in writers for p in f])
        else:
            self.state[table] = _TableState()
            if have_main:
                self.con.execute(f"CREATE VIEW {BASE_SCHEMA}.{_q(table)} AS {main_sql}")

    # --- close -------------------------------------------------------------------------------
    def persist(self) -> None:
        if self.shard is None:
            self._persist_main()
        else:
            self._persist_shard()

    def _persist_main(self) -> None:
        current = _tables(self.con)
        now = _fingerprints(self.con, current)
        for table in current:
            st = self.state.get(table)
            if st is not None and not st.overlays and st.fingerprint == now[table]:
                continue  # unchanged: nothing to write
            table_dir = self.root / table
            table_dir.mkdir(exist_ok=True)
            _copy_atomic(self.con, f"SELECT * FROM {_q(table)}", table_dir / "main.parquet")
            consumed = [_stamp(p) for p in (st.overlays if st else []) if p.suffix == ".json"]
            _write_atomic_text(table_dir / "main.json", json.dumps({"ddl": now[table][2], "consumed": consumed}))
            for p in st.overlays if st else []:
                p.unlink(missing_ok=True)
        for table in set(self.state) - set(current):  # dropped by this connection
            for p in (self.root / table).glob("*"):
                p.unlink(missing_ok=True)
        self.state = {t: _TableState(fingerprint=now[t]) for t in current}  # what the files now hold

    def _persist_shard(self) -> None:
        base_tables = {r[0] for r in self.con.execute(
            "SELECT view_name FROM duckdb_views() WHERE schema_name = ?", [BASE_SCHEMA]).fetchall()}
        current = _tables(self.con)
        now = _fingerprints(self.con, current)
        for table in current:
            st = self.state.get(table)
            if st is not None and st.fingerprint == now[table] and not (self.root / table / f"{self.writer}.json"
                                                                         ).exists():
                continue  # read only (the content hash is cheaper than the diff)
            cols = _columns(self.con, table)
            sel = ", ".join(_q(c) for c in cols)
            table_dir = self.root / table
            own = table_dir / f"{self.writer}.json"
            if table in base_tables:
                have = set(_columns(self.con, table, BASE_SCHEMA))
                base_sel = ", ".join(_q(c) if c in have else f"NULL AS {_q(c)}" for c in cols)
                base = f"SELECT {base_sel} FROM {BASE_SCHEMA}.{_q(table)}"
            else:
                base = f"SELECT {sel} FROM {_q(table)} LIMIT 0"
            ins = f"(SELECT {sel} FROM {_q(table)}) EXCEPT ALL ({base})"
            dele = f"({base}) EXCEPT ALL (SELECT {sel} FROM {_q(table)})"
            if table in base_tables and not own.exists() and (st is None or st.fingerprint[2] != now[table][2]):
                # Only a DDL change (e.g. an added all-NULL column) can leave the rows as loaded; with
                # the same DDL the content hash above already proved them changed. Diffed once, not twice.
                changed = self.con.execute(
                    f"SELECT (SELECT count(*) FROM ({ins})) + (SELECT count(*) FROM ({dele}))").fetchall()[0][0]
                if not changed:
                    continue  # read only
            table_dir.mkdir(exist_ok=True)
            _copy_atomic(self.con, ins, table_dir / f"{self.writer}.ins.parquet")
            _copy_atomic(self.con, dele, table_dir / f"{self.writer}.del.parquet")
            _write_atomic_text(own, json.dumps({"ddl": _ddl(self.con, table)}))  # last: marks it complete


@contextmanager
def _lock(root: Path, exclusive: bool) -> Iterator[None]:
    key = str(root)
    held: set[str] = getattr(_held, "roots", set())
    if key in held:  # a nested connection of a main writer: the outer one holds the lock
        yield
        return
    with open(root / LOCK_FILE, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        if exclusive:
            _held.roots = held | {key}
        try:
            yield
        finally:
            if exclusive:
                _held.roots = getattr(_held, "roots", set()) - {key}
            fcntl.flock(fh, fcntl.LOCK_UN)


def _snapshot(root: Path) -> frozenset[str]:
    """Every data file's name, mtime and size: equal snapshots mean no one wrote in between."""
    out = set()
    for d in os.scandir(root):
        if d.is_dir() and not d.name.startswith("."):
            for f in os.scandir(d.path):
                if not f.name.startswith("."):
                    st = f.stat()
                    out.add(f"{d.name}/{f.name}:{st.st_mtime_ns}:{st.st_size}")
    return frozenset(out)


# A process's last main view, reused while the files are unchanged: the in-process executor opens
# the warehouse once per step and check (~60 times a night), and reloading every table each time
# would cost more than the steps. A failed step drops it (its half-done writes are never kept).
_main_cache: dict[str, tuple[frozenset[str], ParquetWarehouse]] = {}


@contextmanager
def parquet_warehouse(root: str | Path, shard: int | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """A DuckDB connection over the Parquet store at ``root``: main (``shard=None``) or one shard's
    overlay. Changes are written when the block exits normally; an exception discards them."""
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    if shard is not None:
        store = ParquetWarehouse(root, shard)
        try:
            with _lock(root, exclusive=False):
                store.load()
            yield store.con
            with _lock(root, exclusive=False):
                store.persist()
        finally:
            store.con.close()
            for pin in store.pins:
                pin.unlink(missing_ok=True)
        return
    key = str(root)
    with _lock(root, exclusive=True):
        if key in getattr(_held, "open", set()):  # nested in an open main connection: the same view
            yield _main_cache[key][1].con
            return
        cached = _main_cache.pop(key, None)
        if cached is not None and cached[0] == _snapshot(root):
            store = cached[1]
        else:
            if cached is not None:
                cached[1].con.close()
            store = ParquetWarehouse(root, None)
            store.load()
        _main_cache[key] = (frozenset(), store)
        _held.open = getattr(_held, "open", set()) | {key}
        ok = False
        try:
            yield store.con
            store.persist()
            ok = True
        finally:
            _held.open = getattr(_held, "open", set()) - {key}
            if ok:
                _main_cache[key] = (_snapshot(root), store)
            else:
                _main_cache.pop(key, None)
                store.con.close()


def forget_cached(root: str | Path | None = None) -> None:
    """Drop this process's cached main view(s) (tests; a process that hands the store over)."""
    for key in [k for k in _main_cache if root is None or k == str(Path(root).resolve())]:
        _main_cache.pop(key)[1].con.close()


def copy_duckdb_to_parquet(database: str | Path, root: str | Path) -> list[str]:
    """Every table of a DuckDB warehouse file as the ``main`` files of a Parquet store (moving an
    environment to the shared store; the table DDL, keys included, goes along). Returns the tables."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(database), read_only=True)
    try:
        tables = _tables(con)
        ddls = dict(con.execute("SELECT table_name, sql FROM duckdb_tables() WHERE schema_name = 'main'").fetchall())
        with _lock(root.resolve(), exclusive=True):
            for table in tables:
                table_dir = root / table
                table_dir.mkdir(exist_ok=True)
                _copy_atomic(con, f"SELECT * FROM {_q(table)}", table_dir / "main.parquet")
                _write_atomic_text(table_dir / "main.json", json.dumps({"ddl": ddls[table], "consumed": []}))
    finally:
        con.close()
    return tables


# --- the one way to open the warehouse outside a Dagster resource (CLI, control, reports) -----
@contextmanager
def connect_warehouse(database: str | Path, *, read_only: bool = False,
                      store: str | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """A DuckDB connection to the configured store, closed (and, for a writing Parquet main
    connection, persisted) when the block exits. A read-only Parquet view loads main with every
    overlay applied under the shared lock and writes nothing back."""
    store = store or configured_store()
    if store == "duckdb":
        con = duckdb.connect(str(database), read_only=read_only)
        try:
            yield con
        finally:
            con.close()
        return
    if not read_only:
        with parquet_warehouse(database) as con:
            yield con
        return
    root = Path(database).resolve()
    view = ParquetWarehouse(root, None)
    try:
        with _lock(root, exclusive=False):
            view.load(fingerprints=False)
        yield view.con
    finally:
        view.con.close()


def refresh_duckdb_copy(root: str | Path, path: str | Path) -> list[str]:
    """The store's main view (every shard overlay applied) as the tables of the DuckDB file
    ``path``, replaced whole: what dbt — which needs one database file — builds the marts in
    when the warehouse is the Parquet store. Returns the tables copied."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    with connect_warehouse(root, read_only=True, store="parquet") as con:
        tables = _tables(con)
        con.execute(f"ATTACH {_lit(tmp)} AS reporting_copy")
        try:
            for table in tables:
                con.execute(f"CREATE TABLE reporting_copy.{_q(table)} AS SELECT * FROM {_q(table)}")
        finally:
            con.execute("DETACH reporting_copy")
    os.replace(tmp, path)  # readers (a BI tool) see the previous copy or this one, whole
    return tables
