"""Scale-out (issue 15): the nightly job on the swapped (Parquet) store, its data stages as 2
symbol shards, writes exactly the tables the DuckDB file does unsharded; the data stages run by
the real multiprocess executor, the 2 shards in 2 processes writing the store concurrently, give
the unsharded tables too."""

from __future__ import annotations

import multiprocessing.forkserver as mp_forkserver
import shutil
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pytest
import yaml

from ais_pipelines.config import DEFAULT_POLICIES_DIR
from ais_pipelines.definitions import build_definitions
from ais_pipelines.shards import shard_symbols
from ais_pipelines.warehouse_store import copy_duckdb_to_parquet, forget_cached, parquet_warehouse
from tests.conftest import SMALL_UNIVERSE
from tests.integration.sharded_location import recon

QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
D = "2026-11-20"
FIT = "2026-11-13"
# Columns that name the run or the wall clock, not the data: they differ between any two runs.
RUN_COLUMNS = {"run_id", "ingested_at", "raw_path", "solve_time_s", "total_time_s"}
DATA_TABLES = ("bars", "staging_bars", "ingestion_log", "bar_rejects", "data_quality", "quality_flags",
               "data_health")


def _tables(con: duckdb.DuckDBPyConnection) -> dict[str, pd.DataFrame]:
    names = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main'")
             .fetchall()]
    out = {}
    for t in names:
        frame = con.execute(f'SELECT * FROM "{t}"').df()
        frame = frame.drop(columns=[c for c in frame.columns if c in RUN_COLUMNS])
        out[t] = frame.sort_values(list(frame.columns), ignore_index=True) if len(frame.columns) else frame
    return out


def _duckdb_tables(path: Path) -> dict[str, pd.DataFrame]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return _tables(con)
    finally:
        con.close()


def _parquet_tables(root: Path) -> dict[str, pd.DataFrame]:
    forget_cached()  # read what the files hold, not this process's view
    with parquet_warehouse(root) as con:
        return _tables(con)


def _assert_same(expected: dict[str, pd.DataFrame], got: dict[str, pd.DataFrame]) -> None:
    assert sorted(got) == sorted(expected)
    for t, frame in expected.items():
        pd.testing.assert_frame_equal(got[t], frame, check_dtype=True, obj=t)


@pytest.fixture(scope="module")
def warehouses(tmp_path_factory: pytest.TempPathFactory):
    """The reference night on the default store (DuckDB file, in process) and two Parquet stores
    holding the same starting warehouse (the models of FIT, moved by the migration helper)."""
    tmp = tmp_path_factory.mktemp("scale_out")
    mp = pytest.MonkeyPatch()
    policies = tmp / "policies"
    shutil.copytree(DEFAULT_POLICIES_DIR, policies)
    (policies / "universe.yaml").write_text(yaml.safe_dump(SMALL_UNIVERSE, sort_keys=False))
    mp.setenv("AIS_POLICIES_DIR", str(policies))
    mp.setenv("AIS_ENV", "ci")
    for var in ("AIS_DATA_PROVIDER", "FRED_API_KEY", "AIS_WAREHOUSE", "AIS_WAREHOUSE_STORE", "AIS_SYMBOL_SHARDS",
                "AIS_RUNTIME_DIR"):
        mp.delenv(var, raising=False)
    roots = {name: tmp / name for name in ("file", "parquet", "sharded")}
    for r in roots.values():
        r.mkdir()
    defs = build_definitions(env="ci", runtime_root=str(roots["file"]))
    refit = defs.resolve_job_def("model_refit_job").execute_in_process(
        partition_key=FIT, instance=dg.DagsterInstance.ephemeral(), run_config=QUIET)
    assert refit.success
    for name in ("parquet", "sharded"):
        copy_duckdb_to_parquet(roots["file"] / "warehouse.duckdb", roots[name] / "warehouse_parquet")
    checks = _nightly(roots["file"])
    assert len(checks) >= 15 and not checks["data_quality:quality_gate"]  # PLD: INVALID_DATA (a WARN)
    expected = _duckdb_tables(roots["file"] / "warehouse.duckdb")
    assert {"order_proposals", "portfolio_cvar", "forecasts", *DATA_TABLES} <= set(expected)
    assert len(expected["order_proposals"]) > 0 and len(expected["bars"]) > 1000
    yield mp, roots, expected, tmp, checks
    mp.undo()
    forget_cached()


def _nightly(root: Path) -> dict[str, bool]:
    """The nightly job in process (also when sharded: ``execute_in_process`` runs the shard ops one
    after another); every asset check's outcome."""
    defs = build_definitions(env="ci", runtime_root=str(root))
    r = defs.resolve_job_def("nightly_job").execute_in_process(partition_key=D, instance=dg.DagsterInstance.ephemeral(),
                                                               run_config=QUIET, raise_on_error=False)
    assert r.success, [e.step_key for e in r.all_events if e.event_type_value == "STEP_FAILURE"]
    return {f"{c.asset_key.to_user_string()}:{c.check_name}": c.passed for c in r.get_asset_check_evaluations()}


@pytest.mark.slow
def test_nightly_on_the_parquet_store_writes_the_duckdb_tables(warehouses) -> None:
    """The whole night on the swapped store, with the data stages as 2 symbol shards (their ops
    in sequence here; in parallel processes below): the same tables and the same check outcomes."""
    mp, roots, expected, _, checks = warehouses
    with pytest.MonkeyPatch.context() as m:
        m.setenv("AIS_WAREHOUSE_STORE", "parquet")
        m.setenv("AIS_SYMBOL_SHARDS", "2")
        assert _nightly(roots["parquet"]) == checks
    _assert_same(expected, _parquet_tables(roots["parquet"] / "warehouse_parquet"))


@pytest.mark.slow
def test_two_symbol_shards_in_two_processes_give_the_unsharded_tables(warehouses) -> None:
    mp, roots, expected, tmp, _ = warehouses
    symbols = [s["symbol"] for s in SMALL_UNIVERSE["symbols"]]
    assert all(shard_symbols(symbols, k, 2) for k in (0, 1))  # both shards have work
    home = tmp / "dagster_home"
    home.mkdir()
    with pytest.MonkeyPatch.context() as m:
        m.setenv("AIS_WAREHOUSE_STORE", "parquet")
        m.setenv("AIS_SYMBOL_SHARDS", "2")
        m.setenv("AIS_RUNTIME_DIR", str(roots["sharded"]))  # the step processes build their own location
        # a forkserver left by an earlier test (crash harness, store tests) lacks the executor's
        # preloads: every step would re-import for ~6 s. Stop it; the executor starts its own.
        stop = getattr(mp_forkserver._forkserver, "_stop", None)
        if stop is not None:
            stop()
        with dg.instance_for_test(temp_dir=str(home)) as instance:
            result = dg.execute_job(recon("data_stages_job"), instance=instance, run_config=QUIET,
                                    tags={"dagster/partition": D}, raise_on_error=False)
            assert result.success, [e.step_key for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
            started = {e.step_key: e.pid for e in result.all_events if e.event_type_value == "STEP_START"}
    shard_steps = [k for k in started if "_shard_" in k]
    assert sorted(shard_steps) == ["data_quality.quality_shard_0", "data_quality.quality_shard_1",
                                   "raw_daily_bars.ingest_shard_0", "raw_daily_bars.ingest_shard_1"]
    assert len({started[k] for k in shard_steps}) == 4  # every shard step ran in a process of its own
    root = roots["sharded"] / "warehouse_parquet"
    assert not list(root.glob("*/shard-*")), "every shard overlay was absorbed by its fan-in"
    got = _parquet_tables(root)
    assert len(got["data_quality"]) == 2 * len(symbols)  # FIT's rows (moved) and D's, from both shards
    _assert_same({t: expected[t] for t in DATA_TABLES}, {t: got[t] for t in DATA_TABLES})
