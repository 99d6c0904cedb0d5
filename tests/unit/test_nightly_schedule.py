"""The nightly schedule names session D from the wall clock, or from a fixed market clock when
one is set (issue 15): then the wall-clock day never matters (the daemon test runs any day)."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

import dagster as dg
import exchange_calendars as xcals
import pandas as pd
import pytest

from ais_pipelines.config import Policies
from resources.trading import ExecutionClockResource
from sensors.schedules import nightly_schedule, nightly_session

NY = ZoneInfo("America/New_York")
XNYS = xcals.get_calendar("XNYS")


@pytest.mark.parametrize("morning", ["2026-11-30T10:30:00-05:00", "2026-11-27T09:45:00-05:00",
                                     "2026-07-06T10:00:00-04:00", "2026-12-01T00:30:00+00:00"])
def test_fixed_clock_names_the_session_before_its_morning_on_any_wall_clock_day(morning: str) -> None:
    day = pd.Timestamp(datetime.fromisoformat(morning).astimezone(NY).date())
    want = XNYS.previous_session(XNYS.date_to_session(day, direction="next")).date() \
        if not XNYS.is_session(day) else XNYS.previous_session(day).date()  # the reference
    for wall in (datetime(2026, 11, 28, 18, 0, tzinfo=NY), datetime(2026, 12, 25, 18, 0, tzinfo=NY)):
        assert nightly_session(wall, "America/New_York", morning) == want  # a Saturday, a holiday


def test_wall_clock_day_without_a_fixed_clock() -> None:
    assert nightly_session(datetime(2026, 12, 1, 18, 0, tzinfo=NY), "America/New_York") == date(2026, 12, 1)
    assert "is not a session of XNYS" in str(nightly_session(datetime(2026, 11, 28, 18, 0, tzinfo=NY), "America/New_York"))


def test_schedule_evaluation_uses_the_execution_clock_resource() -> None:
    job = dg.define_asset_job("nightly_job")
    sched = nightly_schedule(job, Policies())
    saturday = datetime(2026, 11, 28, 18, 0, tzinfo=NY)
    fixed = ExecutionClockResource(mode="fixed", fixed_now="2026-11-30T10:30:00-05:00")
    req = sched(dg.build_schedule_context(scheduled_execution_time=saturday, resources={"execution_clock": fixed}))
    assert isinstance(req, dg.RunRequest) and req.partition_key == "2026-11-27"
    sim = ExecutionClockResource(mode="simulated")
    skip = sched(dg.build_schedule_context(scheduled_execution_time=saturday, resources={"execution_clock": sim}))
    assert isinstance(skip, dg.SkipReason) and "is not a session of XNYS" in str(skip.skip_message)
