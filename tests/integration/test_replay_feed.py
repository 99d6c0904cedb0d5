"""The replay's market half on the second core (issue 12, ``replay_feed``): the worker's nights,
applied as write logs, leave the same warehouse, ledger and digest as the inline run; a failure
or a kill -9 of the worker stops the replay with a clear error, and the next replay spawns a new
worker."""

from __future__ import annotations

import json
import os
import queue
import signal
import sqlite3
import threading
from datetime import date
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from ais_pipelines import replay_feed
from ais_pipelines.replay import ReplayConfig, ReplayError, run_replay
from ais_pipelines.replay_feed import MarketWorkerError, NightPlan, WorkerFeed
from ais_pipelines.replay_store import ReadCachingWarehouse


def manifest(out: Path) -> dict:
    return json.loads((out / "replay_manifest.json").read_text())


def warehouse_tables(path: Path) -> dict[str, pd.DataFrame]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        names = [r[0] for r in con.execute("SELECT table_schema || '.' || table_name FROM information_schema.tables "
                                           "WHERE table_type = 'BASE TABLE'").fetchall()]
        return {n: con.execute(f"SELECT * FROM {n}").df() for n in names}
    finally:
        con.close()


def ledger_tables(path: Path) -> dict[str, pd.DataFrame]:
    con = sqlite3.connect(path)
    try:
        names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {n: pd.read_sql(f'SELECT * FROM "{n}"', con) for n in names}
    finally:
        con.close()


def comparable(frame: pd.DataFrame, out: Path) -> pd.DataFrame:
    """Without the solver's wall-clock timings (two runs never share them); paths under ``out``
    relative to it."""
    f = frame.drop(columns=[c for c in frame.columns if c.endswith("_time_s")])
    for c in f.columns:
        if not pd.api.types.is_numeric_dtype(f[c]) and f[c].astype(str).str.startswith(str(out)).any():
            f[c] = f[c].astype(str).str.replace(str(out), "<out>", regex=False)
    return f


def assert_same_tables(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame], out_a: Path, out_b: Path) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        x, y = comparable(a[name], out_a), comparable(b[name], out_b)
        assert list(x.columns) == list(y.columns) and list(x.dtypes) == list(y.dtypes), name
        cols = list(x.columns)
        pd.testing.assert_frame_equal(x.sort_values(cols).reset_index(drop=True),
                                      y.sort_values(cols).reset_index(drop=True), check_exact=True, obj=name)


@pytest.mark.slow
def test_worker_replay_equals_the_inline_replay_table_for_table(policies_dir: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    if not replay_feed.worker_enabled():
        pytest.skip("one core: the replay runs inline")
    # 4 sessions: the initial refit, full-window and delta ingestion nights, a carried book
    start, end = date(2026, 11, 16), date(2026, 11, 19)
    worker = run_replay(ReplayConfig(start, end, tmp_path / "worker", policies_dir=policies_dir))
    monkeypatch.setenv("AIS_REPLAY_WORKER", "0")
    inline = run_replay(ReplayConfig(start, end, tmp_path / "inline", policies_dir=policies_dir))
    assert worker.digest == inline.digest
    # the worker computed the market half of the first run; the second computed it inline
    assert set(manifest(worker.out)["worker_timings_s"]) == {"worker_market", "worker_ingest"}
    assert manifest(inline.out)["worker_timings_s"] == {}
    wt, it = warehouse_tables(worker.warehouse), warehouse_tables(inline.warehouse)
    assert len(wt) > 30 and len(wt["main.scenario_returns"]) > 0 and len(wt["main.execution_fills"]) > 0
    assert_same_tables(wt, it, worker.out, inline.out)
    assert_same_tables(ledger_tables(worker.ledger), ledger_tables(inline.ledger), worker.out, inline.out)
    raw = sorted(p.relative_to(worker.out) for p in (worker.out / "raw").rglob("*") if p.is_file())
    assert raw and raw == sorted(p.relative_to(inline.out) for p in (inline.out / "raw").rglob("*") if p.is_file())


def test_a_failure_in_the_worker_is_the_replay_s_error(policies_dir: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIS_FILES_DIR", raising=False)
    cfg = ReplayConfig(date(2026, 11, 18), date(2026, 11, 18), tmp_path / "r", policies_dir=policies_dir,
                       provider="files")
    plan = [NightPlan(date(2026, 11, 18), date(2026, 11, 19), True)]
    # the worker's side, in process: the exception and its traceback are its answer
    results: queue.Queue = queue.Queue()
    replay_feed._produce(cfg, plan, results, os.getppid())
    what, exc, tb, _ = results.get_nowait()
    assert what == "error" and isinstance(exc, ReplayError) and "AIS_FILES_DIR" in str(exc) and "MarketFeed" in tb
    # across the process boundary: the replay raises the worker's exception; the worker, whose
    # job ended with that answer, stays for the next replay
    feed = WorkerFeed(cfg, plan)
    with pytest.raises(ReplayError, match="--provider files needs AIS_FILES_DIR") as info:
        feed.first(None, plan[0].session)
    assert any("in the replay's market worker" in n for n in info.value.__notes__)
    feed.close(ok=False)
    assert feed.worker.process.is_alive() and replay_feed._WORKER is feed.worker
    # the kept worker runs each job in the environment of the replay that sent it
    (tmp_path / "files").mkdir()
    monkeypatch.setenv("AIS_FILES_DIR", str(tmp_path / "files"))
    feed = WorkerFeed(cfg, plan)
    con = ReadCachingWarehouse(duckdb.connect(":memory:"))
    try:
        feed.first(con, plan[0].session)
    except Exception as exc:  # noqa: BLE001 - an empty directory may fail later; not for want of the variable
        assert "needs AIS_FILES_DIR" not in str(exc)
    finally:
        feed.close(ok=False)
        con.close()


@pytest.mark.slow
def test_kill_9_of_the_worker_stops_the_replay_and_the_next_one_respawns(policies_dir: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    if not replay_feed.worker_enabled():
        pytest.skip("one core: the replay runs inline")
    # kill -9 one second after the replay has sent the worker its job: the first night (the
    # full-window ingestion, the cold regime fit) alone takes longer, so nights are still owed
    from ais_pipelines import replay as replay_module

    killed: list[int] = []
    timers: list[threading.Timer] = []
    original = replay_module.market_feed

    def feed_then_kill(*args: object) -> object:
        feed = original(*args)
        killed.append(feed.worker.process.pid)  # type: ignore[union-attr]
        timers.append(threading.Timer(1.0, os.kill, (killed[0], signal.SIGKILL)))
        timers[0].start()
        return feed

    monkeypatch.setattr(replay_module, "market_feed", feed_then_kill)
    try:
        with pytest.raises(MarketWorkerError, match="market worker exited"):
            run_replay(ReplayConfig(date(2026, 11, 11), date(2026, 11, 18), tmp_path / "killed",
                                    policies_dir=policies_dir))
    finally:
        for t in timers:
            t.cancel()
    monkeypatch.setattr(replay_module, "market_feed", original)
    pid = killed[0]
    assert (tmp_path / "killed" / "warehouse.duckdb").exists()  # persisted as far as it went
    start, end = date(2026, 11, 18), date(2026, 11, 19)
    again = run_replay(ReplayConfig(start, end, tmp_path / "again", policies_dir=policies_dir))
    assert replay_feed._WORKER is not None and replay_feed._WORKER.process.pid != pid
    monkeypatch.setenv("AIS_REPLAY_WORKER", "0")
    assert again.digest == run_replay(ReplayConfig(start, end, tmp_path / "inline", policies_dir=policies_dir)).digest
