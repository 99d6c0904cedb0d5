"""Issue 13: the as-of partitions follow the universe's calendars (XLON, 24/7, …) over every
year exchange_calendars covers; old data is assessable at its own last session.

Reproduces: as-of partitions existed only for XNYS sessions 2022..2030 (a static list), so data
ending in 2013, or on another exchange's calendar, failed with DagsterInvalidSubsetError.
"""

from __future__ import annotations

from datetime import datetime
from functools import cache
from pathlib import Path

import dagster as dg
import duckdb
import exchange_calendars as xcals
import numpy as np
import pandas as pd
import pytest
import yaml
from dagster_duckdb import DuckDBResource

from ais_pipelines.as_of_calendar import (
    ENV_OVERRIDE,
    AsOfCalendarError,
    as_of_calendars,
    last_as_of_session,
    session_problem,
)
from ais_pipelines.config import Policies, PolicyFileError
from assets import partitions
from assets.partitions import as_of_partitions_for


def _universe(policies_dir: Path, symbols: list[dict], **extra: object) -> Policies:
    (policies_dir / "universe.yaml").write_text(yaml.safe_dump({"name": "t", "symbols": symbols, **extra}))
    return Policies(policies_dir)


@cache
def _keys(calendars: tuple[str, ...], year: int) -> list[str]:
    keys = as_of_partitions_for(calendars).get_partition_keys(current_time=datetime(year + 1, 1, 1))
    return [k for k in keys if k.startswith(str(year))]


def _xcals_sessions(name: str, year: int) -> list[str]:
    cal = xcals.get_calendar(name, start=f"{year}-01-01", end=f"{year}-12-31")
    return [d.strftime("%Y-%m-%d") for d in cal.sessions]


def us_stocks_2008_2013(policies_dir: Path, tmp_path: Path) -> pd.DatetimeIndex:
    """Files of two US stocks, every XNYS session 2008–2013, and a universe of them."""
    _universe(policies_dir, [{"symbol": "IBM", "asset_class": "STOCKS"}, {"symbol": "KO", "asset_class": "STOCKS"}])
    files = tmp_path / "files"
    files.mkdir()
    sessions = pd.DatetimeIndex([s for y in range(2008, 2014) for s in _xcals_sessions("XNYS", y)])
    rng = np.random.default_rng(3)
    for sym in ("IBM", "KO"):
        close = 80 * np.exp(np.cumsum(rng.normal(0, 0.01, len(sessions))))
        pd.DataFrame({"date": sessions.strftime("%Y-%m-%d"), "open": close, "high": close * 1.01,
                      "low": close * 0.99, "close": close, "volume": 1e6}).to_csv(files / f"{sym}.csv", index=False)
    return sessions


def materialize_night(policies_dir: Path, tmp_path: Path, day: str, assets: list) -> dg.ExecuteInProcessResult:
    """The nightly assets ``assets`` for as-of partition ``day`` over the files of tmp_path/files."""
    from resources.clock import ClockResource
    from resources.market_data import MarketDataResource
    from resources.policies import PoliciesResource
    from resources.runtime import RuntimeResource

    resources = {
        "policies": PoliciesResource(directory=str(policies_dir)),
        "runtime": RuntimeResource(root=str(tmp_path / "rt")),
        "warehouse": DuckDBResource(database=str(tmp_path / "wh.duckdb")),
        "clock": ClockResource(fixed_now="2026-11-21T12:00:00+00:00"),
        "market_data": MarketDataResource(provider="files", files_dir=str(tmp_path / "files")),
    }
    return dg.materialize(assets, resources=resources, partition_key=day, instance=dg.DagsterInstance.ephemeral(),
                          run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}})


def test_a_london_universe_has_the_xlon_sessions_as_partitions(policies_dir: Path) -> None:
    pol = _universe(policies_dir, [{"symbol": "VOD", "asset_class": "STOCKS", "calendar": "XLON"},
                                   {"symbol": "BP", "asset_class": "STOCKS", "calendar": "XLON"},
                                   {"symbol": "GBP/USD", "asset_class": "FX"}])  # 24/5: not an as-of calendar
    cals = as_of_calendars(pol.universe, environ={})
    assert cals == ("XLON",)
    for year in (1995, 2013):
        assert _keys(cals, year) == _xcals_sessions("XLON", year)
    assert "2013-12-25" not in _keys(cals, 2013) and "2013-08-26" not in _keys(cals, 2013)  # UK bank holiday
    assert "2013-07-04" in _keys(cals, 2013)  # a London session on the US holiday


def test_a_crypto_universe_has_every_day_and_fx_every_weekday(policies_dir: Path) -> None:
    pol = _universe(policies_dir, [{"symbol": "BTC/USD", "asset_class": "CRYPTO"},
                                   {"symbol": "ETH/USD", "asset_class": "CRYPTO"}])
    cals = as_of_calendars(pol.universe, environ={})
    assert cals == ("24/7",)
    keys = _keys(cals, 2013)
    assert keys == _xcals_sessions("24/7", 2013) and len(keys) == 365
    fx = _universe(policies_dir, [{"symbol": "EUR/USD", "asset_class": "FX"}])
    assert _keys(as_of_calendars(fx.universe, environ={}), 2013) == _xcals_sessions("24/5", 2013)


def test_a_calendar_recorded_from_a_later_year_starts_its_partitions_there() -> None:
    keys = as_of_partitions_for(("XBOM",)).get_partition_keys(current_time=datetime(1997, 3, 1))
    bom = xcals.get_calendar("XBOM", start="1997-01-01", end="1997-12-31")  # holidays recorded from 1997 on
    assert keys[0] == f"{bom.first_session:%Y-%m-%d}" and keys[:-1] == [
        f"{d:%Y-%m-%d}" for d in bom.sessions_in_range(bom.first_session, "1997-02-28")]


def test_declared_calendars_the_shipped_universe_and_the_validated_override(policies_dir: Path) -> None:
    assert as_of_calendars(Policies().universe, environ={}) == ("XNYS",)  # shipped: US stocks + ETFs + one FX pair
    both = _universe(policies_dir, [{"symbol": "AAPL"}], as_of_calendars=["XNYS", "XLON"])
    cals = as_of_calendars(both.universe, environ={})
    expected = sorted(set(_xcals_sessions("XNYS", 2013)) | set(_xcals_sessions("XLON", 2013)))
    assert _keys(cals, 2013) == expected
    assert as_of_calendars(both.universe, environ={ENV_OVERRIDE: "XPHS"}) == ("XPHS",)
    with pytest.raises(AsOfCalendarError, match="AIS_AS_OF_CALENDAR: unknown calendar 'XNOPE'"):
        as_of_calendars(both.universe, environ={ENV_OVERRIDE: "XNYS,XNOPE"})
    bad = _universe(policies_dir, [{"symbol": "AAPL"}], as_of_calendars=["XLON", "LSE-TYPO"])
    with pytest.raises(PolicyFileError) as exc:
        bad.universe  # noqa: B018
    assert "universe.yaml" in str(exc.value) and "as_of_calendars" in str(exc.value) and "LSE-TYPO" in str(exc.value)


def test_sessions_of_the_calendars_decide_the_cli_and_the_schedules() -> None:
    assert session_problem(("XLON",), "2013-07-04") is None
    assert session_problem(("XLON",), "2013-12-25") == (
        "2013-12-25 (Wednesday) is not an XLON session; the previous one is 2013-12-24, the next 2013-12-27")
    assert last_as_of_session(("XNYS",), "2013-12-29") == pd.Timestamp("2013-12-27")
    assert last_as_of_session(("24/7",), "2013-12-29") == pd.Timestamp("2013-12-29")


def test_the_nightly_schedule_runs_on_the_universes_sessions(policies_dir: Path) -> None:
    from zoneinfo import ZoneInfo

    from resources.trading import ExecutionClockResource
    from sensors.schedules import nightly_schedule

    pol = _universe(policies_dir, [{"symbol": "VOD", "asset_class": "STOCKS", "calendar": "XLON"}])
    sched = nightly_schedule(dg.define_asset_job("nightly_job", selection="*"), pol)
    ny = ZoneInfo("America/New_York")

    def tick(day: int) -> dg.RunRequest | dg.SkipReason:
        return sched(dg.build_schedule_context(scheduled_execution_time=datetime(2013, 8, day, 18, 30, tzinfo=ny),
                                               resources={"execution_clock": ExecutionClockResource(mode="simulated")}))

    assert isinstance(tick(26), dg.SkipReason)  # UK summer bank holiday (NYSE open): London closed nothing
    assert tick(27).partition_key == "2013-08-27"


def test_one_process_serves_one_set_of_as_of_calendars() -> None:
    bound = partitions.bound_calendars()
    assert partitions.bind(bound) == bound
    with pytest.raises(RuntimeError, match="needs its own code location"):
        partitions.bind(("24/7",))


def test_ingest_and_data_quality_at_the_last_session_of_2013_data(policies_dir: Path, tmp_path: Path) -> None:
    """US stocks 2008–2013 through the files provider: the nightly assets run at 2013-12-31."""
    from assets.ingestion import daily_bars, raw_daily_bars
    from assets.partitions import as_of_partitions
    from assets.quality import data_quality

    assert partitions.bound_calendars() == ("XNYS",)
    sessions = us_stocks_2008_2013(policies_dir, tmp_path)
    last = "2013-12-31"
    assert as_of_partitions.has_partition_key(last) and not as_of_partitions.has_partition_key("2013-12-28")
    assert materialize_night(policies_dir, tmp_path, last, [raw_daily_bars, daily_bars, data_quality]).success
    con = duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True)
    try:
        rows = con.execute("SELECT symbol, status, last_date::DATE, expected_sessions, missing_sessions "
                           "FROM data_quality WHERE as_of = DATE '2013-12-31' ORDER BY 1").fetchall()
        stored = con.execute("SELECT count(*), min(date)::DATE FROM bars").fetchone()
    finally:
        con.close()
    day = pd.Timestamp(last).date()
    assert rows == [("IBM", "VALID", day, 1320, 0), ("KO", "VALID", day, 1320, 0)]
    assert stored == (2 * len(sessions), sessions[0].date())  # the whole history stored, not just the window
