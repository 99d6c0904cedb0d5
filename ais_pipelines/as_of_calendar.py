"""Which sessions are as-of sessions D for a universe (issue 13): its declared calendars.

A nightly run decides after a close, so the as-of sessions of a universe are the union of the
sessions of its calendars (``policies/universe.yaml``):

* ``as_of_calendars`` declared in the universe file: exactly those;
* otherwise the calendars of its symbols (a symbol's own ``calendar``, else its asset class's
  default: XNYS stocks, 24/5 FX, 24/7 crypto). Round-the-clock calendars (24/5, 24/7) count
  only when the universe has no exchange calendar: an FX pair in a US stock universe has a bar
  on every weekday, and a night on a NYSE holiday would decide nothing new for the stocks.

``AIS_AS_OF_CALENDAR`` (comma-separated names) overrides both, validated like the file. No
Dagster here: ``assets/partitions.py`` turns the sessions into partitions, the schedules and
the CLI test a day against the same calendars.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from datetime import date

import pandas as pd

from ais_pipelines.core.calendars import get_calendar, known_calendar_names, sessions_between

ENV_OVERRIDE = "AIS_AS_OF_CALENDAR"
ROUND_THE_CLOCK = frozenset({"24/5", "24/7"})
FIRST_AS_OF = pd.Timestamp("1990-01-01")  # the first year ais_pipelines.core.calendars builds


class AsOfCalendarError(ValueError):
    """An as-of calendar name that exchange_calendars does not know."""


def _validated(names: Iterable[str], where: str) -> tuple[str, ...]:
    out = tuple(dict.fromkeys(n.strip() for n in names if n.strip()))
    if not out:
        raise AsOfCalendarError(f"{where}: no calendar named (got {','.join(names)!r})")
    unknown = [n for n in out if n not in known_calendar_names()]
    if unknown:
        raise AsOfCalendarError(f"{where}: unknown calendar {unknown[0]!r} (not an exchange_calendars name, "
                                "e.g. XNYS, XLON, XPHS, 24/5, 24/7)")
    return out


def calendars_of(declared: Sequence[str] | None, symbol_calendars: Iterable[str]) -> tuple[str, ...]:
    """The universe's as-of calendars: ``declared``, else its exchange calendars, else its
    round-the-clock ones (sorted, so the same universe always gives the same partitions)."""
    if declared:
        return tuple(declared)
    found = sorted(set(symbol_calendars))
    exchanges = [c for c in found if c not in ROUND_THE_CLOCK]
    return tuple(exchanges or found)


def as_of_calendars(universe, environ: dict[str, str] | None = None) -> tuple[str, ...]:
    """The as-of calendars of a loaded ``config.Universe``, or the validated env override."""
    env = os.environ if environ is None else environ
    override = env.get(ENV_OVERRIDE, "").strip()
    if override:
        return _validated(override.split(","), ENV_OVERRIDE)
    return calendars_of(universe.as_of_calendars, universe.calendars.values())


def as_of_sessions(calendars: Sequence[str], start: date | pd.Timestamp | None = None,
                   end: date | pd.Timestamp | None = None) -> pd.DatetimeIndex:
    """Every session of any of ``calendars`` in ``[start, end]`` (default: all they cover from 1990)."""
    lo = pd.Timestamp(start) if start is not None else FIRST_AS_OF
    hi = pd.Timestamp(end) if end is not None else max(get_calendar(c).last_session for c in calendars)
    out = pd.DatetimeIndex([])
    for c in calendars:
        out = out.union(sessions_between(c, lo, hi))
    return out.as_unit("ns")


def is_as_of_session(calendars: Sequence[str], day: date | pd.Timestamp) -> bool:
    ts = pd.Timestamp(day).normalize()
    return any(get_calendar(c).is_session(ts) for c in calendars
               if get_calendar(c).first_session <= ts <= get_calendar(c).last_session)


def last_as_of_session(calendars: Sequence[str], day: date | pd.Timestamp) -> pd.Timestamp | None:
    """The last as-of session on or before ``day`` (None before the calendars begin)."""
    ts = pd.Timestamp(day).normalize()
    found = [get_calendar(c).date_to_session(min(ts, get_calendar(c).last_session), direction="previous")
             for c in calendars if get_calendar(c).first_session <= ts]
    return pd.Timestamp(max(found)).tz_localize(None) if found else None


def next_as_of_session(calendars: Sequence[str], day: date | pd.Timestamp) -> pd.Timestamp | None:
    """The first as-of session after ``day`` (the execution session of D's decisions), or None."""
    ts = pd.Timestamp(day).normalize()
    found = [get_calendar(c).date_to_session(ts + pd.Timedelta(days=1), direction="next")
             for c in calendars if get_calendar(c).first_session <= ts < get_calendar(c).last_session]
    return pd.Timestamp(min(found)).tz_localize(None) if found else None


def session_problem(calendars: Sequence[str], day: date | pd.Timestamp) -> str | None:
    """Why ``day`` is not an as-of session (naming the previous and the next one), or None."""
    ts = pd.Timestamp(day).normalize()
    names = ", ".join(calendars)
    first = min(get_calendar(c).first_session for c in calendars)
    last = max(get_calendar(c).last_session for c in calendars)
    if not first <= ts <= last:
        return f"{ts.date()} is outside the {names} calendar ({first:%Y-%m-%d} … {last:%Y-%m-%d})"
    if is_as_of_session(calendars, ts):
        return None
    around = as_of_sessions(calendars, ts - pd.Timedelta(days=30), ts + pd.Timedelta(days=30))
    before, after = around[around < ts], around[around > ts]
    prev = f"{before[-1]:%Y-%m-%d}" if len(before) else "none"
    nxt = f"{after[0]:%Y-%m-%d}" if len(after) else "none"
    return f"{ts.date()} ({ts:%A}) is not an {names} session; the previous one is {prev}, the next {nxt}"
