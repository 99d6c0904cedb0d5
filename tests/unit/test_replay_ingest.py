"""Incremental ingestion of the replay (issue 12): each night's warehouse tables equal those of
the full-window night (the live ingestion stages over the whole fetch window)."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import duckdb
import pandas as pd
import yaml

from ais_pipelines import bars_cache
from ais_pipelines.config import DEFAULT_POLICIES_DIR, Policies
from ais_pipelines.data_stages import assess_and_store_quality, promote_staged_bars, store_ingestion
from ais_pipelines.ingestion import ingest_universe
from ais_pipelines.replay import replay_sessions
from ais_pipelines.replay_feed import _providers, ingest_session
from ais_pipelines.replay_ingest import IncrementalIngestion
from ais_pipelines.warehouse import read_bars

UNIVERSE = {"name": "incremental", "benchmark": "equal_weight_stocks", "symbols": [
    {"symbol": "AAPL", "asset_class": "STOCKS", "sector": "Information Technology"},
    {"symbol": "KO", "asset_class": "STOCKS", "sector": "Consumer Staples"},
    {"symbol": "HON", "asset_class": "STOCKS", "sector": "Industrials"},
    {"symbol": "PLD", "asset_class": "STOCKS", "sector": "Real Estate"},
    {"symbol": "GLD", "asset_class": "COMMODITIES", "sector": "Precious Metals"},
    {"symbol": "EUR/USD", "asset_class": "FX", "sector": "Currencies"},
]}
DEFECTS = [  # every kind that rejects rows, dense enough that rejects fall out of the sliding window
    {"symbol": "KO", "kind": "duplicate_dates", "rows": 40},
    {"symbol": "HON", "kind": "ohlc_inconsistent", "rows": 300},
    {"symbol": "HON", "kind": "non_positive", "rows": 40},
    {"symbol": "PLD", "kind": "missing_sessions", "fraction": 0.3},
]
READ_BY_THE_NIGHT = {  # table → columns that identify a row
    "bars": ["symbol", "date"],
    "bar_rejects": ["run_id", "symbol", "date", "reason_code", "detail"],
    "ingestion_log": ["run_id", "symbol"],
    "data_quality": ["as_of", "symbol"],
    "quality_flags": ["as_of", "symbol", "session", "flag"],
    "data_health": ["as_of"],
}


def _policies(tmp: Path) -> Path:
    d = tmp / "policies"
    shutil.copytree(DEFAULT_POLICIES_DIR, d)
    (d / "universe.yaml").write_text(yaml.safe_dump(UNIVERSE, sort_keys=False))
    prov = yaml.safe_load((d / "providers.yaml").read_text())
    prov["sample"]["defects"] = DEFECTS
    prov["sample"]["n_sessions"] = 1330  # history before the first night's window: it slides over rows
    (d / "providers.yaml").write_text(yaml.safe_dump(prov, sort_keys=False))
    return d


def _table(con: duckdb.DuckDBPyConnection, name: str, keys: list[str]) -> pd.DataFrame:
    frame = con.execute(f'SELECT * FROM "{name}"').df()
    if name == "ingestion_log":
        frame = frame.drop(columns="raw_path")  # names the archive of the newest rows (see module doc)
    return frame.sort_values(keys, kind="stable").reset_index(drop=True).reindex(columns=sorted(frame.columns))


def test_each_incremental_night_equals_the_full_window_night(tmp_path: Path) -> None:
    pol = Policies(_policies(tmp_path))
    name, providers, entitled = _providers(pol, "sample")
    nights = replay_sessions(date(2026, 11, 13), date(2026, 11, 19))
    full, inc = duckdb.connect(), duckdb.connect()
    ingestor = IncrementalIngestion(providers, name, entitled)
    dropped = carried_bars = 0
    bars_cache.clear()
    for night in nights:
        run_id = f"replay-{night}"
        out = ingest_universe(policies=pol, providers=providers, configured_provider=name, entitled=entitled,
                              end=night, archive_dir=tmp_path / "full" / run_id)
        store_ingestion(full, out, run_id, night, stamp=pd.Timestamp(night) + pd.Timedelta(hours=23))
        promote_staged_bars(full, run_id)
        carried = [w.rejects["_date"].to_numpy() for w in ingestor.windows.values()]
        ingest_session(inc, pol, ingestor, night, tmp_path / "inc")
        if ingestor.window_start is not None:
            dropped += sum(int((d < ingestor.window_start.to_datetime64()).sum()) for d in carried)
        # the night's one bars read is carried from the night before plus tonight's rows
        carried_bars += bool(bars_cache._entry and bars_cache._entry[0][0] == run_id)
        pd.testing.assert_frame_equal(bars_cache.run_bars(inc, run_id), read_bars(inc))
        for con in (full, inc):
            assess_and_store_quality(con, pol, pd.Timestamp(night))
        for table, keys in READ_BY_THE_NIGHT.items():
            pd.testing.assert_frame_equal(_table(inc, table, keys), _table(full, table, keys), obj=f"{table} {night}")
    assert ingestor.delta_nights == len(nights) - 1 and ingestor.full_nights == 1
    assert carried_bars == len(nights) - 1  # every incremental night
    # the case is not vacuous: rows were rejected, and some left the window as it slid
    assert int(inc.execute("SELECT count(*) FROM bar_rejects").fetchone()[0]) > 0 and dropped > 0
    # the log of an incremental night still accounts for the whole window
    assert int(inc.execute(f"SELECT max(rows_received) FROM ingestion_log WHERE run_id = 'replay-{nights[-1]}'")
               .fetchone()[0]) > 1000
