"""Bring-your-own-data: the files provider through real ingestion, with every kind of bad input.

One bad file or symbol never stops the others, and nothing stored is lost or overwritten.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pytest
from dagster_duckdb import DuckDBResource

from ais_pipelines.config import Policies
from ais_pipelines.core.calendars import last_n_sessions
from ais_pipelines.ingestion import ingest_universe
from ais_pipelines.market_data.base import InstrumentRequest, ProviderEmptyError
from ais_pipelines.market_data.files import FilesInputError, FilesProvider
from ais_pipelines.market_data.sample import SampleInstrument, generate_sample_bars
from assets.ingestion import daily_bars, raw_bars_schema, raw_daily_bars
from resources.clock import ClockResource
from resources.market_data import MarketDataResource
from resources.policies import PoliciesResource
from resources.runtime import RuntimeResource

END = pd.Timestamp("2026-11-20")


def good_frame(symbol: str, klass: str = "STOCKS", n: int = 1320) -> pd.DataFrame:
    bars = generate_sample_bars([SampleInstrument(symbol, klass, "Test")], END.date(), n, seed=3)
    out = bars.astype(object)  # text cells, as a hand-made CSV would hold them
    out["date"] = bars["date"].dt.strftime("%Y-%m-%d")
    return out


def write_csv(directory: Path, name: str, frame: pd.DataFrame) -> Path:
    path = directory / name
    frame.to_csv(path, index=False)
    return path


def ingest(policies: Policies, directory: Path, archive: Path):
    return ingest_universe(policies=policies, providers={"files": FilesProvider(directory)},
                           configured_provider="files", entitled=frozenset({"files"}), end=END.date(),
                           archive_dir=archive)


def test_bad_inputs_get_reason_codes_and_good_symbols_still_load(policies_dir: Path, tmp_path: Path):
    files = tmp_path / "files"
    files.mkdir()
    write_csv(files, "AAPL.csv", good_frame("AAPL"))  # clean, one file per symbol
    # MSFT: strings in numeric columns, NaNs, an intraday row, negative volume, a duplicated row.
    msft = good_frame("MSFT")
    msft.loc[10, "close"] = "12,5 USD"
    msft.loc[11, "open"] = None
    msft.loc[12, "date"] = msft.loc[12, "date"] + " 14:30:00"
    msft.loc[13, "volume"] = -5
    msft = pd.concat([msft, msft.iloc[[20]]], ignore_index=True)
    write_csv(files, "MSFT.csv", msft)
    write_csv(files, "JPM.csv", good_frame("JPM").drop(columns=["close"]))  # missing column
    (files / "XOM.csv").write_text("")  # empty file
    # One long file with BTC plus a symbol the universe does not know.
    btc = good_frame("BTC/USD", "CRYPTO")
    write_csv(files, "long.csv", pd.concat([btc, good_frame("ZZZZ").head(5)], ignore_index=True))
    # Mixed naive and tz-aware timestamps in one file.
    eur = good_frame("EUR/USD", "FX")
    eur.loc[:5, "date"] = eur.loc[:5, "date"] + "T00:00:00+00:00"
    write_csv(files, "EUR_USD.csv", eur)

    outcome = ingest(Policies(policies_dir), files, tmp_path / "raw")
    log = outcome.log.set_index("symbol")
    assert log.loc["AAPL", "status"] == "OK" and log.loc["AAPL", "rows_valid"] == 1320
    assert log.loc["BTC/USD", "status"] == "OK"
    assert log.loc["MSFT", "status"] == "OK" and log.loc["MSFT", "rows_rejected"] >= 5
    assert log.loc["JPM", "reason_code"] == "MISSING_COLUMNS" and "close" in log.loc["JPM", "detail"]
    assert log.loc["XOM", "reason_code"] == "EMPTY_INPUT"
    assert log.loc["EUR/USD", "reason_code"] == "MIXED_TIMEZONES"
    assert log.loc["PLD", "reason_code"] == "PROVIDER_EMPTY_RESPONSE"  # no file at all

    msft_rejects = set(outcome.rejects.loc[outcome.rejects["symbol"] == "MSFT", "reason_code"])
    assert {"NON_NUMERIC_VALUE", "MISSING_VALUE", "INTRADAY_TIMESTAMP", "NEGATIVE_VOLUME", "DUPLICATE_ROW"} <= msft_rejects
    assert "UNKNOWN_SYMBOL" in set(outcome.rejects.loc[outcome.rejects["symbol"] == "ZZZZ", "reason_code"])
    # Valid MSFT rows made it; the bad ones did not.
    stored = outcome.bars[outcome.bars["symbol"] == "MSFT"]
    assert len(stored) == 1320 - 4 and (stored["volume"] >= 0).all()


def test_files_provider_errors_name_the_file(tmp_path: Path):
    (tmp_path / "JPM.csv").write_text("date,open,high\n2026-01-02,1,2\n")
    provider = FilesProvider(tmp_path)
    with pytest.raises(FilesInputError, match=r"JPM.csv: missing columns \['low', 'close', 'volume'\]") as err:
        provider.fetch_daily_bars(InstrumentRequest("JPM", "STOCKS"), END.date(), END.date())
    assert err.value.reason_code == "MISSING_COLUMNS"
    with pytest.raises(ProviderEmptyError):
        provider.fetch_daily_bars(InstrumentRequest("NOPE", "STOCKS"), END.date(), END.date())


def test_parquet_files_load_like_csv(tmp_path: Path, policies_dir: Path):
    frame = generate_sample_bars([SampleInstrument("AAPL", "STOCKS", "Test")], END.date(), 1320, seed=3)
    frame.to_parquet(tmp_path / "AAPL.parquet")
    result = FilesProvider(tmp_path).fetch_daily_bars(InstrumentRequest("AAPL", "STOCKS"), END.date(), END.date())
    assert len(result.frame) == 1320 and result.lineage["synthetic"] is False


def test_a_bad_refetch_never_loses_or_overwrites_stored_bars(policies_dir: Path, tmp_path: Path):
    files = tmp_path / "files"
    files.mkdir()
    write_csv(files, "AAPL.csv", good_frame("AAPL"))
    write_csv(files, "MSFT.csv", good_frame("MSFT"))
    resources = {
        "policies": PoliciesResource(directory=str(policies_dir)),
        "runtime": RuntimeResource(root=str(tmp_path / "rt")),
        "warehouse": DuckDBResource(database=str(tmp_path / "wh.duckdb")),
        "clock": ClockResource(fixed_now="2026-11-21T12:00:00+00:00"),
        "market_data": MarketDataResource(provider="files", files_dir=str(files)),
    }

    def run() -> None:
        dg.materialize([raw_daily_bars, raw_bars_schema, daily_bars], resources=resources,
                       instance=dg.DagsterInstance.ephemeral(), partition_key=None,
                       run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}})

    def snapshot() -> pd.DataFrame:
        con = duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True)
        try:
            return con.execute("SELECT symbol, date, close, volume FROM bars ORDER BY ALL").df()
        finally:
            con.close()

    run()
    before = snapshot()
    assert set(before["symbol"]) == {"AAPL", "MSFT"} and len(before) == 2 * 1320

    # Next night: MSFT's file is broken (missing column), AAPL's has a corrupt last row and a conflicting
    # duplicate of an old date. Stored history must survive untouched.
    write_csv(files, "MSFT.csv", good_frame("MSFT").drop(columns=["volume"]))
    aapl = good_frame("AAPL")
    last = aapl["date"].iloc[-1]
    aapl.loc[len(aapl) - 1, "close"] = "-1"
    dup = aapl.iloc[[100]].copy()
    dup["close"] = float(aapl.loc[100, "close"]) * 3
    write_csv(files, "AAPL.csv", pd.concat([aapl, dup], ignore_index=True))
    run()
    after = snapshot()
    pd.testing.assert_frame_equal(before, after)
    assert last == str(last_n_sessions("XNYS", END, 1)[0].date())
