"""One bars read per run, filtered in memory: the same frames as read_bars, re-read when stale."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from ais_pipelines import bars_cache
from ais_pipelines.warehouse import read_bars, upsert_bars


def _bars(symbols: list[str], dates: pd.DatetimeIndex) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    n = len(symbols) * len(dates)
    c = 100 + rng.normal(0, 1, n).cumsum()
    return pd.DataFrame({
        "symbol": np.repeat(symbols, len(dates)), "date": np.tile(dates, len(symbols)),
        "open": c, "high": c + 1, "low": c - 1, "close": c, "volume": 1e6, "adj_close": c,
        "asset_class": "STOCKS", "provider": "sample",
    })


@pytest.fixture
def con(tmp_path: Path):
    bars_cache.clear()
    c = duckdb.connect(str(tmp_path / "w.duckdb"))
    upsert_bars(c, _bars(["MSFT", "AAPL", "BTC/USD"], pd.bdate_range("2024-01-01", periods=30)), "r0")
    yield c
    c.close()
    bars_cache.clear()


def test_run_bars_equal_read_bars(con) -> None:
    end = pd.Timestamp("2024-01-25")
    everyone, later = ["MSFT", "AAPL", "BTC/USD", "NOPE"], pd.Timestamp("2030-01-01")  # filters that keep all rows
    for symbols, e in ((None, None), (["AAPL", "BTC/USD", "NOPE"], None), (None, end), (["MSFT"], end), ([], end),
                       (everyone, None), (everyone, later), (None, later), (["AAPL"], later)):
        pd.testing.assert_frame_equal(bars_cache.run_bars(con, "run-1", symbols, end=e),
                                      read_bars(con, symbols, end=e), check_exact=True)


def test_one_read_per_run_and_fresh_after_a_write_or_a_new_run(con, monkeypatch) -> None:
    reads: list[int] = []
    real = bars_cache.read_bars

    def counting(c, *a, **k):
        reads.append(1)
        return real(c, *a, **k)

    monkeypatch.setattr(bars_cache, "read_bars", counting)
    for _ in range(3):
        bars_cache.run_bars(con, "run-1", ["AAPL"], end=pd.Timestamp("2024-01-10"))
    assert len(reads) == 1
    upsert_bars(con, _bars(["NVDA"], pd.bdate_range("2024-01-01", periods=5)), "r1")  # another writer
    assert "NVDA" in set(bars_cache.run_bars(con, "run-1")["symbol"])
    bars_cache.run_bars(con, "run-2")
    assert len(reads) == 3
    # callers may mutate what they get: the shared frame is not theirs
    got = bars_cache.run_bars(con, "run-2")
    got.loc[:, "close"] = -1.0
    assert (bars_cache.run_bars(con, "run-2")["close"] > 0).all()


def test_staged_upsert_in_duckdb_equals_the_pandas_upsert(tmp_path: Path) -> None:
    """promote_staged_bars upserts the staging table inside DuckDB (issue 15); the reference is
    upsert_bars of the same frame: same counts night after night and the same stored table."""
    from ais_pipelines.data_stages import STAGING_TABLE
    from ais_pipelines.warehouse import upsert_staged_bars

    ref, new = duckdb.connect(str(tmp_path / "ref.duckdb")), duckdb.connect(str(tmp_path / "new.duckdb"))
    assert upsert_staged_bars(new, STAGING_TABLE) == upsert_bars(ref, _bars([], pd.DatetimeIndex([])), "r0")
    night1 = _bars(["MSFT", "AAPL"], pd.bdate_range("2024-01-01", periods=20))
    night2 = _bars(["MSFT", "NVDA"], pd.bdate_range("2024-01-15", periods=20))
    night2.loc[night2.index[:3], "close"] += 0.5  # three restated bars: updated, not inserted
    for k, night in enumerate([night1, night2, night2], start=1):
        new.register("s", night.assign(run_id=f"r{k}"))
        new.execute(f"CREATE OR REPLACE TABLE {STAGING_TABLE} AS SELECT * FROM s")
        new.unregister("s")
        got, want = upsert_staged_bars(new, STAGING_TABLE), upsert_bars(ref, night, f"r{k}")
        assert got == want
    assert (got.inserted, got.updated, got.unchanged) == (0, 0, 20 * 2)
    q = "SELECT * FROM bars ORDER BY symbol, date"
    pd.testing.assert_frame_equal(new.execute(q).df(), ref.execute(q).df())


def test_extend_carries_the_read_to_the_next_run_exactly_as_a_fresh_read(con) -> None:
    """Issue 12: the held read plus the rows just inserted (new dates of held symbols and a new
    symbol sorting between them) is read_bars' frame — rows, order, dtypes — after an integer
    lexsort instead of a string sort."""
    bars_cache.run_bars(con, "night-1")
    added = pd.concat([_bars(["MSFT", "AAPL", "BTC/USD"], pd.bdate_range("2024-02-12", periods=2)),
                       _bars(["AMZN", "Ab"], pd.bdate_range("2024-02-12", periods=3))], ignore_index=True)
    upsert_bars(con, added, "r2")
    assert bars_cache.extend(con, "night-2", read_bars(con, start=pd.Timestamp("2024-02-12")))
    pd.testing.assert_frame_equal(bars_cache.run_bars(con, "night-2"), read_bars(con), check_exact=True)
    assert not bars_cache.extend(con, "night-3", read_bars(con).head(3))  # not exactly the rows added
