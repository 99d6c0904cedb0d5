"""Exchange calendars per asset class (§B3), backed by ``exchange_calendars``.

Sessions are returned as tz-naive midnight ``Timestamp``s (the session label), which is the
date convention of every bars table in this project.
"""

from __future__ import annotations

from datetime import date
from functools import lru_cache
from typing import TYPE_CHECKING

import pandas as pd

from ais_pipelines.core.asset_classes import AssetClass

if TYPE_CHECKING:  # exchange_calendars takes seconds to import: only where a calendar is used
    import exchange_calendars as xcals

# Default calendar per asset class; policies/universe.yaml may override per class or symbol.
DEFAULT_CALENDARS: dict[AssetClass, str] = {
    AssetClass.STOCKS: "XNYS",
    AssetClass.FX: "24/5",
    AssetClass.CRYPTO: "24/7",
    AssetClass.COMMODITIES: "XNYS",  # commodity exposure is traded through NYSE-listed ETFs
}


@lru_cache(maxsize=32)
def get_calendar(name: str) -> xcals.ExchangeCalendar:
    import exchange_calendars as xcals

    # 1990 to a few years ahead, within the years the calendar records (e.g. XBOM 1997–2026).
    dispatcher = xcals.calendar_utils.global_calendar_dispatcher
    factory = dispatcher._calendar_factories.get(dispatcher.resolve_alias(name))  # noqa: SLF001 - no public getter
    low, high = (factory.bound_min(), factory.bound_max()) if factory is not None else (None, None)
    start, end = pd.Timestamp("1990-01-01"), pd.Timestamp(f"{date.today().year + 2}-12-31")
    return xcals.get_calendar(name, start=max(start, low) if low is not None else start,
                              end=min(end, high) if high is not None else end)


@lru_cache(maxsize=1)
def known_calendar_names() -> frozenset[str]:
    """Every name ``exchange_calendars`` resolves (canonical names and aliases, e.g. XNYS, NYSE, 24/7)."""
    import exchange_calendars as xcals

    return frozenset(xcals.get_calendar_names(include_aliases=True))


def calendar_name(asset_class: AssetClass | str, override: str | None = None) -> str:
    return override or DEFAULT_CALENDARS[AssetClass(asset_class)]


def sessions_between(calendar: str, start: date | pd.Timestamp, end: date | pd.Timestamp) -> pd.DatetimeIndex:
    """All sessions with ``start <= session <= end`` (tz-naive)."""
    cal = get_calendar(calendar)
    s = max(pd.Timestamp(start).normalize(), cal.first_session)
    e = min(pd.Timestamp(end).normalize(), cal.last_session)
    if s > e:
        return pd.DatetimeIndex([])
    out = cal.sessions_in_range(s, e)
    return pd.DatetimeIndex(out.tz_localize(None) if out.tz is not None else out).as_unit("ns")


def last_n_sessions(calendar: str, end: date | pd.Timestamp, n: int) -> pd.DatetimeIndex:
    """The ``n`` most recent sessions on or before ``end``."""
    cal = get_calendar(calendar)
    end_ts = pd.Timestamp(end).normalize()
    last = cal.date_to_session(end_ts, direction="previous")
    out = cal.sessions_window(last, -n)
    return pd.DatetimeIndex(out.tz_localize(None) if out.tz is not None else out).as_unit("ns")


def calendar_days_for_sessions(calendar: str, end: date | pd.Timestamp, n: int) -> int:
    """Calendar days to request so that ``[end - days, end]`` holds at least ``n`` sessions (§B1)."""
    first = last_n_sessions(calendar, end, n)[0]
    return int((pd.Timestamp(end).normalize() - first).days) + 1


def is_session(calendar: str, day: date | pd.Timestamp) -> bool:
    return bool(get_calendar(calendar).is_session(pd.Timestamp(day).normalize()))


def is_open_at(calendar: str, when: pd.Timestamp) -> bool:
    """Whether the market is open at a tz-aware instant (for the intraday path)."""
    ts = pd.Timestamp(when)
    if ts.tzinfo is None:
        raise ValueError("is_open_at needs a timezone-aware timestamp")
    return bool(get_calendar(calendar).is_open_on_minute(ts.tz_convert("UTC").floor("min")))
