"""The replay's read-caching warehouse connection (issue 12) answers exactly what DuckDB does."""

from __future__ import annotations

from datetime import date

import duckdb
import numpy as np
import pandas as pd

from ais_pipelines.replay_store import ReadCachingWarehouse
from ais_pipelines.warehouse import append_rows, read_table, replace_partition, table_exists, upsert_bars


def _both() -> tuple[duckdb.DuckDBPyConnection, ReadCachingWarehouse]:
    return duckdb.connect(), ReadCachingWarehouse(duckdb.connect())


def test_reads_and_table_list_follow_every_write_exactly() -> None:
    plain, cached = _both()
    d1, d2 = date(2026, 11, 18), date(2026, 11, 19)
    steps = [
        lambda c: replace_partition(c, "t", pd.DataFrame({"x": [1.0, 2.0], "s": ["a", "b"]}), "as_of", d1),
        lambda c: replace_partition(c, "t", pd.DataFrame({"x": [3.0]}), "as_of", d2),
        lambda c: replace_partition(c, "t", pd.DataFrame({"x": [4.0], "s": ["c"], "new": [True]}), "as_of", d1),
        lambda c: replace_partition(c, "t", pd.DataFrame(columns=["x"]), "as_of", d2),  # empties d2
        lambda c: append_rows(c, "log", pd.DataFrame({"k": ["a"]})),
        lambda c: append_rows(c, "log", pd.DataFrame({"k": ["b"]})),
        lambda c: c.execute("UPDATE log SET k = 'z' WHERE k = 'a'"),
        lambda c: c.execute("ALTER TABLE log ADD COLUMN n INTEGER"),
        lambda c: c.execute("CREATE TABLE other AS SELECT 1 AS one"),
        lambda c: c.execute("DROP TABLE other"),
        lambda c: upsert_bars(c, pd.DataFrame({"symbol": ["A"], "date": [pd.Timestamp(d1)], "open": [1.0],
                                               "high": [1.0], "low": [1.0], "close": [1.0], "volume": [1.0],
                                               "adj_close": [1.0], "asset_class": ["STOCKS"], "provider": ["x"]}),
                              "r1"),
    ]
    queries = [("t", "", ()), ("t", "as_of = ?", (d1,)), ("t", "as_of = ?", (d2,)), ("t", "as_of < ?", (d2,)),
               ("log", "", ()), ("other", "", ()), ("bars", "", ())]
    for step in steps:
        step(plain)
        step(cached)
        for _ in range(2):  # the second read is served from memory: still equal
            for table, where, params in queries:
                assert table_exists(cached, table) == table_exists(plain, table), table
                pd.testing.assert_frame_equal(read_table(cached, table, where, params),
                                              read_table(plain, table, where, params))
    assert cached.hits > 0 and cached.misses > 0
    # partitions nobody reads back are held and written in one batch, the table as DuckDB's
    for k in range(5):
        frame = pd.DataFrame({"x": [float(k)] * 3, "s": [f"s{k}"] * 3, "t": pd.Series(["a", None, "b"], dtype="string")})
        for c in (plain, cached):
            replace_partition(c, "held", frame, "as_of", date(2026, 11, 10 + k))
    replace_partition(plain, "held", pd.DataFrame({"x": [9.0]}), "as_of", date(2026, 11, 10))
    replace_partition(cached, "held", pd.DataFrame({"x": [9.0]}), "as_of", date(2026, 11, 10))
    assert cached.writes >= 6 and table_exists(cached, "held") and cached.merged == 0
    pd.testing.assert_frame_equal(cached.execute('SELECT * FROM "held"').df(), plain.execute('SELECT * FROM "held"').df())
    assert cached.execute('DESCRIBE "held"').fetchall() == plain.execute('DESCRIBE "held"').fetchall()
    assert cached.merged == 4  # the first created the table, the last replaced a partition of another shape
    # a registered frame is a table while registered, as for DuckDB
    cached.register("incoming", pd.DataFrame({"a": [1]}))
    plain.register("incoming", pd.DataFrame({"a": [1]}))
    assert table_exists(cached, "incoming") and table_exists(plain, "incoming")
    cached.unregister("incoming")
    plain.unregister("incoming")
    assert not table_exists(cached, "incoming") and not table_exists(plain, "incoming")
    # handed-out frames are copies: a caller's edit never reaches the next reader
    handed = read_table(cached, "t", "as_of = ?", (d1,))
    handed.loc[0, "x"] = -1.0
    assert read_table(cached, "t", "as_of = ?", (d1,))["x"].tolist() == [4.0]


def test_a_held_partition_is_read_back_as_duckdb_types_it_without_being_written() -> None:
    """The held read (pandas conversions, or DuckDB's casts where pandas cannot be shown equal)
    against the table read, for every column kind the steps write; nothing is flushed for it."""
    import numpy as np

    plain, cached = _both()
    cached.verify = False
    d0, d1 = date(2026, 11, 18), date(2026, 11, 19)
    first = pd.DataFrame({"x": [1.0, 2.0], "i": [1, 2], "b": [True, False], "s": ["a", "b"], "o": ["p", "q"],
                          "n": [1.0, 2.0], "ts": pd.to_datetime(["2026-11-18 00:00", "2026-11-18 10:00"]),
                          "d": [date(2026, 1, 1), date(2026, 1, 2)], "gone": ["g", "h"],
                          "sec": pd.to_datetime(["2026-11-18 00:00", "2026-11-18 10:00"]).astype("datetime64[s]"),
                          "day": [date(2026, 1, 1), date(2026, 1, 2)]})
    later = pd.DataFrame({"x": [np.nan, -0.0, np.inf], "i": [3, 4, 5], "b": [False, True, True],
                          "s": pd.Series(["c", None, ""], dtype="string"), "o": ["r", None, np.nan],
                          "n": [7, 8, 9],  # int64 into the DOUBLE column
                          "ts": pd.to_datetime(["2026-11-19 09:30", "2026-11-19 00:00", "2026-11-20 00:00"]),
                          "d": [date(2026, 2, 1), None, date(2026, 2, 3)],  # "gone": NULL
                          "sec": pd.to_datetime(["2026-11-19 09:30", "NaT", "2026-11-20 00:00"]).astype("datetime64[s]"),
                          "day": pd.to_datetime(["2026-11-19 00:00", "NaT", "2026-11-20 00:00"])})
    for c in (plain, cached):
        replace_partition(c, "t", first, "as_of", d0)
    read_table(cached, "t", "as_of = ?", (d0,))  # flushes: the table exists with its types
    full = later.assign(gone=["x", None, "z"])
    with_time = full.assign(day=pd.to_datetime(["2026-11-19 09:30", "NaT", "2026-11-20 00:00"]))
    # pandas converts these but: an empty frame (DuckDB types its text columns object, not str),
    # a DATE column with a time of day (DuckDB casts it away), a DOUBLE column the frame lacks
    for frame, by_duckdb in ((full, 0), (full.assign(d=[None] * 3), 0), (full.iloc[:0], 1),
                             (full.assign(gone=[None] * 3), 0), (with_time, 1), (later, 0),
                             (later.drop(columns=["x"]), 1)):
        for c in (plain, cached):
            replace_partition(c, "t", frame, "as_of", d1)
        before, cast = cached.held_reads, cached.cast_reads
        got = read_table(cached, "t", "as_of = ?", (d1,))
        assert cached.held_reads == before + 1 and "t" in cached._pending  # not written for the read
        assert cached.cast_reads == cast + by_duckdb
        pd.testing.assert_frame_equal(got, read_table(plain, "t", "as_of = ?", (d1,)), check_exact=True)
    # a column the table lacks cannot be shown equal: the table is written and read
    for c in (plain, cached):
        replace_partition(c, "t", full.assign(extra=1.5), "as_of", d1)
    pd.testing.assert_frame_equal(read_table(cached, "t", "as_of = ?", (d1,)),
                                  read_table(plain, "t", "as_of = ?", (d1,)), check_exact=True)
    assert "t" not in cached._pending


def test_verify_mode_checks_each_held_read_against_the_written_table() -> None:
    cached = ReadCachingWarehouse(duckdb.connect(), verify=True)
    d0 = date(2026, 11, 18)
    replace_partition(cached, "t", pd.DataFrame({"x": [1.0]}), "as_of", d0)
    read_table(cached, "t")
    replace_partition(cached, "t", pd.DataFrame({"x": [2.0]}), "as_of", d0)
    assert read_table(cached, "t", "as_of = ?", (d0,))["x"].tolist() == [2.0] and cached.held_reads == 1


def test_a_derived_value_is_built_once_per_state_of_its_tables() -> None:
    from ais_pipelines.warehouse import derived

    plain, cached = _both()
    d0 = date(2026, 11, 18)
    builds: list[float] = []

    def total(con: object) -> float:
        def build() -> float:
            builds.append(1.0)
            return float(read_table(con, "t", "as_of = ?", (d0,))["x"].sum())
        return derived(con, "total", ["t"], (d0,), build)

    for x in (1.0, 5.0):
        for c in (plain, cached):
            replace_partition(c, "t", pd.DataFrame({"x": [x, 1.0]}), "as_of", d0)
        assert total(cached) == total(cached) == total(plain) == total(plain) == x + 1.0
    assert len(builds) == 2 + 4  # the replay's connection: once per write; a plain one: every call
    cached.execute("CREATE TABLE other AS SELECT 1 AS one")  # a DDL of another table keeps it
    assert total(cached) == 6.0 and len(builds) == 6
    cached.execute('ALTER TABLE "t" ADD COLUMN extra DOUBLE')  # one of its table drops it
    assert total(cached) == 6.0 and len(builds) == 7
    cached.execute("CREATE INDEX ix ON other (one)")  # a DDL not shown to touch one relation: everything
    assert total(cached) == 6.0 and len(builds) == 8


def test_a_held_partition_of_a_table_with_an_untyped_column() -> None:
    """A column only ever NULL has no type yet (created from an empty first partition)."""
    plain, cached = _both()
    d0, d1, d2 = date(2026, 11, 18), date(2026, 11, 19), date(2026, 11, 20)
    for c in (plain, cached):
        replace_partition(c, "t", pd.DataFrame({"x": [1.0], "u": [None]}), "as_of", d0)
    read_table(cached, "t")
    for day, u in ((d1, [None, None]), (d2, ["typed", None])):
        for c in (plain, cached):
            replace_partition(c, "t", pd.DataFrame({"x": [2.0, 3.0], "u": u}), "as_of", day)
        pd.testing.assert_frame_equal(read_table(cached, "t", "as_of = ?", (day,)),
                                      read_table(plain, "t", "as_of = ?", (day,)), check_exact=True)
    assert cached.held_reads == 1 and cached.cast_reads == 0  # the typed value types the column: written


def test_the_book_before_d_is_the_latest_partition_before_d() -> None:
    """``nightly.current_book`` reads only the last positions / P&L partition before D (the
    tables grow a partition a session): the book, cash and NAV a read of every row gives."""
    from ais_pipelines.nightly import current_book

    plain, cached = _both()
    days = [date(2026, 11, 16), date(2026, 11, 17), date(2026, 11, 18)]
    for c in (plain, cached):
        for k, day in enumerate(days):
            replace_partition(c, "positions_snapshot", pd.DataFrame(
                {"symbol": ["A", "B", "C"][: k + 1], "qty": [10.0 + k] * (k + 1),
                 "market_value": [100.0] * (k + 1), "mark": [10.0] * (k + 1)}), "as_of", day)
            replace_partition(c, "pnl_history", pd.DataFrame({"nav": [1000.0 + k], "cash": [900.0 - k]}), "as_of", day)
    for c in (plain, cached):
        book, cash, nav = current_book(c, pd.Timestamp(days[2]), 5.0)  # D's own partition is not read
        assert book.to_dict("list") == {"symbol": ["A", "B"], "qty": [11.0, 11.0], "market_value": [100.0, 100.0],
                                        "mark": [10.0, 10.0]}
        assert (cash, nav) == (899.0, 1001.0)
        book, cash, nav = current_book(c, pd.Timestamp(days[0]), 5.0)
        assert book.empty and list(book.columns) == ["symbol", "qty", "market_value", "mark"]
        assert (cash, nav) == (None, 5.0)


def test_partitions_that_keep_an_untyped_column_null_are_written_in_one_batch() -> None:
    """The regime's macro dates are NULL in every partition without FRED: their column has no
    type, and a run of such partitions is one DELETE + INSERT that leaves the table (types
    included) as writing them one by one does; a run with a real value there is not merged."""
    plain, cached = _both()
    days = [date(2026, 11, 2 + k) for k in range(6)]
    for c in (plain, cached):
        replace_partition(c, "t", pd.DataFrame({"x": [0.0], "u": [None]}), "as_of", date(2026, 11, 1))
    cached.flush()
    for k, day in enumerate(days[:4]):
        for c in (plain, cached):
            replace_partition(c, "t", pd.DataFrame({"x": [float(k)], "u": [None]}), "as_of", day)
    cached.flush()
    assert cached.merged == 4
    for k, day in enumerate(days[4:]):
        for c in (plain, cached):
            replace_partition(c, "t", pd.DataFrame({"x": [float(k)], "u": ["2026-11-05" if k else None]}), "as_of", day)
    cached.flush()
    assert cached.merged == 4  # the typed value types the column: written one by one, as replace_partition
    assert cached.execute('DESCRIBE "t"').fetchall() == plain.execute('DESCRIBE "t"').fetchall()
    pd.testing.assert_frame_equal(cached.execute('SELECT * FROM "t" ORDER BY as_of').df(),
                                  plain.execute('SELECT * FROM "t" ORDER BY as_of').df(), check_exact=True)
    # all-NULL columns DuckDB types anyway (a float NaN is DOUBLE, a pandas string NA VARCHAR) type
    # the untyped column in replace_partition: not merged either
    for column in (pd.Series([np.nan]), pd.Series([None], dtype="string")):
        plain, cached = _both()
        for c in (plain, cached):
            replace_partition(c, "t", pd.DataFrame({"x": [0.0], "u": [None]}), "as_of", date(2026, 11, 1))
        cached.flush()
        for k, day in enumerate(days[:3]):
            for c in (plain, cached):
                replace_partition(c, "t", pd.DataFrame({"x": [float(k)], "u": column}), "as_of", day)
        cached.flush()
        assert cached.merged == 0
        assert cached.execute('DESCRIBE "t"').fetchall() == plain.execute('DESCRIBE "t"').fetchall()


def test_ensure_table_of_an_existing_table_keeps_its_held_writes_held() -> None:
    """``CREATE TABLE IF NOT EXISTS`` of a table that exists changes nothing (each night's quality
    stage ensures ``quality_flags``), so the partitions held for it stay held for the batch; of a
    table that does not exist yet, the held writes that create it are made first, as inline."""
    plain, cached = _both()
    ddl = 'CREATE TABLE IF NOT EXISTS "f" ("as_of" DATE, "flag" VARCHAR)'
    for c in (plain, cached):
        replace_partition(c, "f", pd.DataFrame({"flag": ["a"]}), "as_of", date(2026, 11, 1))
        c.execute(ddl)  # the held write created the table first: this creates nothing
    assert cached.flushes == 1
    for k in range(3):
        for c in (plain, cached):
            replace_partition(c, "f", pd.DataFrame({"flag": [f"b{k}"]}), "as_of", date(2026, 11, 2 + k))
            c.execute(ddl)
    assert cached.flushes == 1 and cached.merged == 0  # still held
    pd.testing.assert_frame_equal(read_table(cached, "f"), read_table(plain, "f"))
    assert cached.merged == 3
