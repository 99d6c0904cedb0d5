"""Issue 13: the whole history a provider returns is read, every row stored or rejected.

Reproduces the measured defects: rows older than ``fetch_sessions`` were silently dropped
(59,610 of 111,850 in one data set), and an old reject moved a symbol's window start back,
adding ~1,000 phantom missing sessions.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
from dagster_duckdb import DuckDBResource

from ais_pipelines.config import Policies
from ais_pipelines.core.calendars import sessions_between
from ais_pipelines.data_stages import quality_params
from ais_pipelines.ingestion import ingest_universe, row_accounting
from ais_pipelines.market_data.files import FilesProvider
from ais_pipelines.market_data.sample import SampleInstrument, generate_sample_bars
from assets.ingestion import daily_bars, raw_bars_schema, raw_daily_bars, rows_accounted
from assets.quality import data_quality
from resources.clock import ClockResource
from resources.market_data import MarketDataResource
from resources.policies import PoliciesResource
from resources.runtime import RuntimeResource

END = pd.Timestamp("2026-11-20")
N = 2000  # more than fetch_sessions (1320): the old ingestion dropped the first 680 rows


def frame(symbol: str, n: int = N) -> pd.DataFrame:
    bars = generate_sample_bars([SampleInstrument(symbol, "STOCKS", "Test")], END.date(), n, seed=5)
    out = bars.astype(object)
    out["date"] = bars["date"].dt.strftime("%Y-%m-%d")
    return out


def test_whole_history_is_stored_and_every_row_accounted_for(policies_dir: Path, tmp_path: Path) -> None:
    files = tmp_path / "files"
    files.mkdir()
    aapl = frame("AAPL")
    aapl.loc[3, "close"] = "-1"  # an old bad row, 1,997 sessions before D
    after = aapl.iloc[[-1]].copy()
    after["date"] = "2026-11-23"  # a session after the as-of date: never stored by this run
    pd.concat([aapl, after], ignore_index=True).to_csv(files / "AAPL.csv", index=False)
    # A long file with a universe symbol and one outside it: its 7 rows are rejected one by one.
    pd.concat([frame("MSFT"), frame("ZZZZ", 7)]).to_csv(files / "long.csv", index=False)

    pol = Policies(policies_dir)
    assert pol.quality.history.fetch_sessions == 1320
    out = ingest_universe(policies=pol, providers={"files": FilesProvider(files)}, configured_provider="files",
                          entitled=frozenset({"files"}), end=END.date(), archive_dir=tmp_path / "raw")
    log = out.log.set_index("symbol")
    assert (log.loc["AAPL", "rows_received"], log.loc["AAPL", "rows_valid"], log.loc["AAPL", "rows_rejected"]) == (
        N + 1, N - 1, 2)
    assert log.loc["MSFT", "rows_valid"] == N
    aapl_bars = out.bars[out.bars["symbol"] == "AAPL"]
    assert aapl_bars["date"].min() == pd.Timestamp(aapl["date"].iloc[0])  # nothing before the window dropped
    assert aapl_bars["date"].max() == END
    codes = out.rejects.groupby(["symbol", "reason_code"]).size().to_dict()
    assert codes == {("AAPL", "AFTER_AS_OF"): 1, ("AAPL", "NON_POSITIVE_PRICE"): 1, ("ZZZZ", "UNKNOWN_SYMBOL"): 7}
    acc = row_accounting(out.log, out.bars, out.rejects)
    assert (acc.read, acc.stored, acc.rejected, acc.balanced) == (2 * N + 1 + 7, 2 * N - 1, 9, True)

    # The quality gate still judges the last fetch_sessions sessions, from the first valid bar.
    from ais_pipelines.core.quality import assess_quality

    q = assess_quality(out.bars, out.rejects, END.date(), quality_params(pol), pol.universe.calendars,
                       pol.universe.asset_classes).set_index("symbol")
    window = sessions_between("XNYS", "2000-01-01", END)[-1320:]
    assert q.loc["AAPL", "first_date"] == window[0]
    assert (q.loc["AAPL", "expected_sessions"], q.loc["AAPL", "missing_sessions"]) == (1320, 0)
    assert q.loc["AAPL", "non_positive_prices"] == 0  # the bad row lies outside the window


def test_rejects_table_exists_empty_and_the_accounting_check_passes(policies_dir: Path, tmp_path: Path) -> None:
    files = tmp_path / "files"
    files.mkdir()
    frame("AAPL", 1300).to_csv(files / "AAPL.csv", index=False)
    resources = {
        "policies": PoliciesResource(directory=str(policies_dir)),
        "runtime": RuntimeResource(root=str(tmp_path / "rt")),
        "warehouse": DuckDBResource(database=str(tmp_path / "wh.duckdb")),
        "clock": ClockResource(fixed_now="2026-11-21T12:00:00+00:00"),
        "market_data": MarketDataResource(provider="files", files_dir=str(files)),
    }
    result = dg.materialize([raw_daily_bars, raw_bars_schema, rows_accounted, daily_bars], resources=resources,
                            instance=dg.DagsterInstance.ephemeral(),
                            run_config={"ops": {"raw_daily_bars": {"config": {"symbols": ["AAPL"]}}},
                                        "loggers": {"console": {"config": {"log_level": "ERROR"}}}})
    assert result.success
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    acc = checks["rows_accounted"]
    assert acc.passed and acc.metadata["rows_read"].value == 1300 and acc.metadata["rows_rejected"].value == 0
    con = duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM bar_rejects").fetchone() == (0,)
        cols = [r[0] for r in con.execute("DESCRIBE bar_rejects").fetchall()]
        assert cols[:3] == ["symbol", "date", "reason_code"]
    finally:
        con.close()
    assert data_quality is not None
