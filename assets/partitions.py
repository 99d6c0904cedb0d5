"""As-of-session partitions: one partition per session of the universe's as-of calendars, so
every day's decision is a reproducible artefact and a backfill is a walk-forward replay (§0, §L1).

A daily time-window definition filtered to the sessions (issue 13) of the calendars the
universe declares (``ais_pipelines/as_of_calendar.py``: XNYS, XLON, XPHS, …; 24/7 for a crypto
universe, 24/5 for FX): every session ``exchange_calendars`` covers from 1990 (or the
calendar's own first year) up to today, so data ending in 2013 is assessable at its last
session; weekends and holidays are excluded, so the UI lists only real sessions. Keys stay ISO
dates ``YYYY-MM-DD``.

The definitions factory binds the calendars of the universe it loads (:func:`bind`) before the
asset modules are imported; they read ``as_of_partitions`` from here. One code location serves
one universe: binding another set of calendars in the same process is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import dagster as dg
import pandas as pd

LAST_AS_OF = "2030-12-31"  # sessions known ahead; partitions themselves end today (end_offset=1)

_bound: tuple[str, ...] | None = None


def _exclusions(sessions: pd.DatetimeIndex, start: pd.Timestamp, end: pd.Timestamp) -> list:
    """Weekend crons plus every other day that is not a session (holidays, closures)."""
    days = pd.date_range(start, end, freq="D")
    out: list = []
    if not days[days.day_of_week >= 5].isin(sessions).any():
        out += ["0 0 * * 6", "0 0 * * 0"]
        days = days[days.day_of_week < 5]
    out += [d.to_pydatetime() for d in days.difference(sessions)]
    return out


@lru_cache(maxsize=8)
def as_of_partitions_for(calendars: tuple[str, ...]) -> dg.DailyPartitionsDefinition:
    """Daily partitions whose keys are exactly the sessions of ``calendars`` (their union)."""
    from ais_pipelines.as_of_calendar import as_of_sessions

    sessions = as_of_sessions(calendars)
    start, end = sessions[0], sessions[-1]
    return dg.DailyPartitionsDefinition(
        start_date=start.strftime("%Y-%m-%d"),
        end_offset=1,  # today's session is a key once the nightly job runs after its close
        exclusions=_exclusions(sessions, start, min(end, pd.Timestamp(LAST_AS_OF))),
    )


def bind(calendars: Sequence[str]) -> tuple[str, ...]:
    """Fix the as-of calendars of this process (the definitions factory, from its universe)."""
    global _bound
    cals = tuple(calendars)
    if _bound is not None and _bound != cals:
        raise RuntimeError(f"the as-of partitions of this process are already built on {', '.join(_bound)}; "
                           f"a universe on {', '.join(cals)} needs its own code location (AIS_UNIVERSE_FILE)")
    _bound = cals
    return cals


def bound_calendars() -> tuple[str, ...]:
    """The bound calendars; unbound, those of the process's universe (``Policies()``)."""
    if _bound is None:
        from ais_pipelines.as_of_calendar import as_of_calendars
        from ais_pipelines.config import Policies

        bind(as_of_calendars(Policies().universe))
    assert _bound is not None
    return _bound


def __getattr__(name: str) -> dg.DailyPartitionsDefinition:
    # ``from assets.partitions import as_of_partitions``: built on first use, from the bound calendars.
    if name == "as_of_partitions":
        return as_of_partitions_for(bound_calendars())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def partition_as_of(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext) -> pd.Timestamp:
    return pd.Timestamp(context.partition_key)
