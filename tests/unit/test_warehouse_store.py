"""The Parquet warehouse store (issue 15): shards write concurrently without losing each other's
rows, the main writer absorbs them, a failed step writes nothing, keys and types survive."""

from __future__ import annotations

import multiprocessing as mp
from datetime import date
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from ais_pipelines.shards import shard_of, shard_symbols
from ais_pipelines.warehouse import read_bars, read_table, replace_partition, upsert_bars
from ais_pipelines.warehouse_store import copy_duckdb_to_parquet, forget_cached, parquet_warehouse

D = date(2024, 1, 2)


def _bars(symbols: list[str], close: float) -> pd.DataFrame:
    days = pd.to_datetime(["2024-01-01", "2024-01-02"])
    return pd.DataFrame([{"symbol": s, "date": d, "open": close, "high": close, "low": close, "close": close,
                          "volume": 1.0, "adj_close": close, "asset_class": "STOCKS", "provider": "t"}
                         for s in symbols for d in days])


def _files(root: Path, table: str) -> set[str]:
    return {p.name for p in (root / table).iterdir()}


@pytest.fixture(autouse=True)
def _fresh_cache():
    yield
    forget_cached()


def test_shards_replace_one_partition_without_deleting_each_other(tmp_path: Path) -> None:
    root = tmp_path / "wh"
    with parquet_warehouse(root) as con:  # last night's unsharded rows for D
        replace_partition(con, "q", pd.DataFrame({"symbol": ["A", "B", "C"], "v": [1.0, 2.0, 3.0]}), "as_of", D)
    for shard, symbols in ((0, ["A"]), (1, ["B", "C"])):
        with parquet_warehouse(root, shard=shard) as con:
            # a shard sees main, never the other shard's overlay
            assert sorted(read_table(con, "q")["v"]) == [1.0, 2.0, 3.0]
            replace_partition(con, "q", pd.DataFrame({"symbol": symbols, "v": [10.0] * len(symbols)}), "as_of", D)
    assert {"shard-0.json", "shard-1.json"} <= _files(root, "q")
    with parquet_warehouse(root) as con:  # the fan-in: every shard's rows, none of the replaced ones
        got = read_table(con, "q").sort_values("symbol")
    assert got["symbol"].tolist() == ["A", "B", "C"] and got["v"].tolist() == [10.0, 10.0, 10.0]
    assert _files(root, "q") == {"main.parquet", "main.json"}  # overlays absorbed
    forget_cached()
    with parquet_warehouse(root) as con:  # read back from the files alone
        assert sorted(read_table(con, "q")["v"]) == [10.0, 10.0, 10.0]


def test_bars_keep_their_primary_key_and_upsert_through_a_shard(tmp_path: Path) -> None:
    root = tmp_path / "wh"
    with parquet_warehouse(root) as con:
        upsert_bars(con, _bars(["A", "B"], 1.0), "r1")
    with parquet_warehouse(root, shard=0) as con:
        stats = upsert_bars(con, _bars(["A"], 2.0), "r2")  # INSERT OR REPLACE needs the key
    assert (stats.inserted, stats.updated, stats.unchanged) == (0, 2, 0)
    forget_cached()
    with parquet_warehouse(root) as con:
        bars = read_bars(con)
        pk = con.execute("SELECT constraint_type FROM duckdb_constraints() WHERE table_name = 'bars'").fetchall()
    assert len(bars) == 4  # replaced, not duplicated
    assert bars.set_index("symbol")["close"].groupby(level=0).max().to_dict() == {"A": 2.0, "B": 1.0}
    assert ("PRIMARY KEY",) in pk
    assert bars["date"].dtype == "datetime64[ns]"


def test_a_failed_block_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "wh"
    with parquet_warehouse(root) as con:
        replace_partition(con, "q", pd.DataFrame({"symbol": ["A"], "v": [1.0]}), "as_of", D)
    for shard in (None, 0):
        with pytest.raises(RuntimeError), parquet_warehouse(root, shard=shard) as con:
            replace_partition(con, "q", pd.DataFrame({"symbol": ["A"], "v": [99.0]}), "as_of", D)
            raise RuntimeError("step failed")
    assert _files(root, "q") == {"main.parquet", "main.json"}
    with parquet_warehouse(root) as con:
        assert read_table(con, "q")["v"].tolist() == [1.0]


def _shard_writer(root: str, shard: int, symbols: list[str]) -> None:
    with parquet_warehouse(root, shard=shard) as con:
        replace_partition(con, "q", pd.DataFrame({"symbol": symbols, "v": [float(shard)] * len(symbols)}),
                          "as_of", D)


def test_two_processes_write_their_shards_at_once(tmp_path: Path) -> None:
    root = tmp_path / "wh"
    symbols = [f"S{i}" for i in range(40)]
    ctx = mp.get_context("forkserver")  # never fork a process holding DuckDB threads
    procs = [ctx.Process(target=_shard_writer, args=(str(root), k, shard_symbols(symbols, k, 2))) for k in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    with parquet_warehouse(root) as con:
        got = read_table(con, "q").set_index("symbol")["v"]
    assert sorted(got.index) == sorted(symbols)
    assert all(got[s] == float(shard_of(s, 2)) for s in symbols)


def test_a_duckdb_file_moves_to_the_parquet_store_unchanged(tmp_path: Path) -> None:
    db = tmp_path / "w.duckdb"
    con = duckdb.connect(str(db))
    upsert_bars(con, _bars(["A", "B"], 1.5), "r1")
    replace_partition(con, "q", pd.DataFrame({"symbol": ["A"], "v": [1.0], "n": [3]}), "as_of", D)
    before = {t: con.execute(f'SELECT * FROM "{t}" ORDER BY ALL').df() for t in ("bars", "q")}
    con.close()
    assert copy_duckdb_to_parquet(db, tmp_path / "wh") == ["bars", "q"]
    with parquet_warehouse(tmp_path / "wh") as pcon:
        for t, frame in before.items():
            pd.testing.assert_frame_equal(pcon.execute(f'SELECT * FROM "{t}" ORDER BY ALL').df(), frame)


def test_shard_assignment_is_stable_and_adding_a_symbol_moves_no_other() -> None:
    symbols = [f"SYM{i}" for i in range(200)]
    before = {s: shard_of(s, 4) for s in symbols}
    grown = {k: shard_symbols([*symbols, "NEW1", "NEW2"], k, 4) for k in range(4)}
    assert all(s in grown[before[s]] for s in symbols)  # every old symbol stays in its shard
    assert shard_of("AAPL", 4) == 0 and shard_of("MSFT", 4) == 2  # a fixed hash: the same in every process
    counts = pd.Series(before).value_counts()
    assert len(counts) == 4 and counts.min() >= 35  # roughly even
    with pytest.raises(ValueError):
        shard_of("A", 0)


def test_the_factory_chooses_the_store_and_refuses_shards_on_the_duckdb_file(tmp_path: Path, monkeypatch) -> None:
    from ais_pipelines.definitions import symbol_shards, warehouse_resource

    for var in ("AIS_WAREHOUSE", "AIS_WAREHOUSE_STORE", "AIS_SYMBOL_SHARDS"):
        monkeypatch.delenv(var, raising=False)
    default = warehouse_resource(tmp_path)
    assert (default.store, default.database) == ("duckdb", str(tmp_path / "warehouse.duckdb"))
    assert symbol_shards() == 1
    monkeypatch.setenv("AIS_SYMBOL_SHARDS", "2")
    with pytest.raises(ValueError, match="needs AIS_WAREHOUSE_STORE=parquet"):
        symbol_shards()
    monkeypatch.setenv("AIS_WAREHOUSE_STORE", "parquet")
    assert symbol_shards() == 2
    shared = warehouse_resource(tmp_path)
    assert (shared.store, shared.database) == ("parquet", str(tmp_path / "warehouse_parquet"))
    for bad in ("0", "two"):
        monkeypatch.setenv("AIS_SYMBOL_SHARDS", bad)
        with pytest.raises(ValueError, match="AIS_SYMBOL_SHARDS must be"):
            symbol_shards()
    monkeypatch.setenv("AIS_WAREHOUSE_STORE", "postgres")
    with pytest.raises(ValueError, match="AIS_WAREHOUSE_STORE must be one of"):
        warehouse_resource(tmp_path)


def test_a_column_added_by_a_shard_reaches_main(tmp_path: Path) -> None:
    root = tmp_path / "wh"
    with parquet_warehouse(root) as con:
        replace_partition(con, "q", pd.DataFrame({"symbol": ["A", "B"], "v": [1.0, 2.0]}), "as_of", D)
    with parquet_warehouse(root, shard=0) as con:  # additive schema evolution inside a shard
        replace_partition(con, "q", pd.DataFrame({"symbol": ["A"], "v": [3.0], "w": ["new"]}), "as_of", D)
    forget_cached()
    with parquet_warehouse(root) as con:
        got = read_table(con, "q").sort_values("symbol")
    assert got["symbol"].tolist() == ["A"] and got["w"].tolist() == ["new"]  # the shard replaced D


def test_the_cli_view_and_the_dbt_copy_see_main_with_every_shard_applied(tmp_path: Path) -> None:
    """``connect_warehouse(read_only=True)`` (the CLI) and ``refresh_duckdb_copy`` (the file dbt
    builds the marts in) see what a main writer sees, overlays included, and write nothing back."""
    from ais_pipelines.warehouse_store import connect_warehouse, refresh_duckdb_copy

    root = tmp_path / "wh"
    with parquet_warehouse(root) as con:
        upsert_bars(con, _bars(["A"], 1.0), "main")
    with parquet_warehouse(root, shard=1) as con:
        upsert_bars(con, _bars(["B"], 2.0), "s1")
    files = {t: _files(root, t) for t in ("bars",)}
    with connect_warehouse(root, read_only=True, store="parquet") as con:
        seen = read_bars(con)
        con.execute("CREATE TABLE scratch AS SELECT 1 AS x")  # a read-only view keeps nothing
    assert sorted(seen["symbol"].unique()) == ["A", "B"] and len(seen) == 4
    assert {t: _files(root, t) for t in ("bars",)} == files and not (root / "scratch").exists()
    copy = tmp_path / "marts.duckdb"
    assert refresh_duckdb_copy(root, copy) == ["bars"]
    con = duckdb.connect(str(copy), read_only=True)
    try:
        pd.testing.assert_frame_equal(read_bars(con), seen)
    finally:
        con.close()
    with parquet_warehouse(root) as con:  # a later night: the copy is replaced whole
        upsert_bars(con, _bars(["C"], 3.0), "main")
    refresh_duckdb_copy(root, copy)
    con = duckdb.connect(str(copy), read_only=True)
    try:
        assert sorted(read_bars(con)["symbol"].unique()) == ["A", "B", "C"]
    finally:
        con.close()
