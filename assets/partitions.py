"""As-of-session partitions: one partition per session of the as-of calendar, so every day's
decision is a reproducible artefact and a backfill is a walk-forward replay (§0, §L1).

A daily time-window definition filtered to the calendar's sessions (issue 13): every session
``exchange_calendars`` covers from ``FIRST_AS_OF`` up to today (data ending in 2013 is
assessable at its last session); weekends and holidays are excluded, so the UI lists only real
sessions. Keys stay ISO dates ``YYYY-MM-DD``. The calendar is XNYS unless
``AIS_AS_OF_CALENDAR`` names another one (e.g. XPHS, XLON, 24/7 for a crypto-only universe).
"""

from __future__ import annotations

import os

import dagster as dg
import pandas as pd

from ais_pipelines.core.calendars import sessions_between

AS_OF_CALENDAR = os.environ.get("AIS_AS_OF_CALENDAR", "XNYS")
FIRST_AS_OF = "1990-01-02"  # the first session ais_pipelines.core.calendars builds
LAST_AS_OF = "2030-12-31"   # sessions known ahead; partitions themselves end today (end_offset=1)


def _exclusions(calendar: str, start: str, end: str) -> list:
    """Weekend crons plus every weekday that is not a session (holidays, closures)."""
    sessions = sessions_between(calendar, start, end)
    days = pd.date_range(start, end, freq="D")
    out: list = []
    weekend_closed = not days[days.day_of_week >= 5].isin(sessions).any()
    if weekend_closed:
        out += ["0 0 * * 6", "0 0 * * 0"]
        days = days[days.day_of_week < 5]
    out += [d.to_pydatetime() for d in days.difference(sessions)]
    return out


as_of_partitions = dg.DailyPartitionsDefinition(
    start_date=FIRST_AS_OF,
    end_offset=1,  # today's session is a key once the nightly job runs after its close
    exclusions=_exclusions(AS_OF_CALENDAR, FIRST_AS_OF, LAST_AS_OF),
)


def partition_as_of(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext) -> pd.Timestamp:
    return pd.Timestamp(context.partition_key)
