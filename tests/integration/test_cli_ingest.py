"""Issue 13: ``ais ingest`` on your own files (any exchange, any year) and ``ais quality show``.

Reproduces: data ending in 2013 or on another exchange's calendar could not be assessed at its
own last session (DagsterInvalidSubsetError / PROVIDER_EMPTY_RESPONSE), and there was no
command for a directory of files.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
from typer.testing import CliRunner

from ais_pipelines.cli import app
from ais_pipelines.core.calendars import sessions_between


def _walk_csv(path: Path, sessions: pd.DatetimeIndex, seed: int, split_at: int | None = None) -> None:
    rng = np.random.default_rng(seed)
    close = 50 * np.exp(np.cumsum(rng.normal(0, 0.01, len(sessions))))
    volume = np.full(len(sessions), 1e5)
    if split_at is not None:  # an unadjusted 2:1 split, no adj_close column
        close[split_at:] /= 2
        volume[split_at:] *= 2
    pd.DataFrame({"date": sessions.strftime("%Y-%m-%d"), "open": close, "high": close * 1.01, "low": close * 0.99,
                  "close": close, "volume": volume}).to_csv(path, index=False)


def test_ingest_old_foreign_data_at_its_last_session_then_show_a_symbols_flags(tmp_path: Path) -> None:
    files = tmp_path / "files"
    files.mkdir()
    sessions = sessions_between("XPHS", "2006-01-01", "2013-12-27")  # Philippine Stock Exchange, ends 2013
    _walk_csv(files / "ALI.csv", sessions, 1)
    _walk_csv(files / "BDO.csv", sessions, 2, split_at=len(sessions) - 300)
    env = {"AIS_RUNTIME_DIR": str(tmp_path / "rt")}
    runner = CliRunner()
    result = runner.invoke(app, ["ingest", "--dir", str(files), "--calendar", "XPHS"], env=env)
    assert result.exit_code == 0, result.output
    last = sessions[-1].date()
    assert f"assessing data quality as of {last}" in result.output
    n = len(sessions)
    assert f"rows read {2 * n:,} = stored {2 * n:,} + rejected 0" in result.output
    con = duckdb.connect(str(tmp_path / "rt" / "warehouse.duckdb"), read_only=True)
    try:
        q = con.execute("SELECT symbol, status, calendar, expected_sessions FROM data_quality ORDER BY 1").fetchall()
        split = con.execute("SELECT session FROM quality_flags WHERE flag = 'split_like_jumps'").fetchall()
    finally:
        con.close()
    assert q == [("ALI", "VALID", "XPHS", 1320), ("BDO", "INVALID_DATA", "XPHS", 1320)]
    assert split == [(sessions[n - 300].date(),)]

    shown = runner.invoke(app, ["quality", "show", "bdo"], env=env)
    assert shown.exit_code == 0, shown.output
    assert "BDO as of 2013-12-27: INVALID_DATA" in shown.output
    assert f"{sessions[n - 300].date()} split_like_jumps UNADJUSTED_SPLIT" in shown.output

    bad = runner.invoke(app, ["ingest", "--dir", str(tmp_path / "nope")], env=env)
    assert bad.exit_code == 2 and "not a directory" in bad.output
    early = runner.invoke(app, ["ingest", "--dir", str(files), "--calendar", "XPHS", "--as-of", "2005-06-01"],
                          env=env)
    assert early.exit_code == 1 and "no symbol has a valid bar on or before 2005-06-01" in early.output
