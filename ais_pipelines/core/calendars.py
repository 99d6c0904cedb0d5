"""Exchange calendars per asset class (§B3), backed by ``exchange_calendars``.

Sessions are returned as tz-naive midnight ``Timestamp``s (the session label), which is the
date convention of every bars table in this project.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

# Re-exported: their home is calendar_names (no pandas, for the policy loader).
from ais_pipelines.core.calendar_names import CALENDAR_CACHE_ENV
from ais_pipelines.core.calendar_names import DEFAULT_CALENDARS as DEFAULT_CALENDARS
from ais_pipelines.core.calendar_names import calendar_name as calendar_name
from ais_pipelines.core.calendar_names import known_calendar_names as known_calendar_names

if TYPE_CHECKING:  # exchange_calendars takes seconds to import: only where a calendar is used
    import exchange_calendars as xcals


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


# --------------------------------------------------------------------------------------------
# Session table: what the intraday path asks of a calendar (is it open now, the next session's
# open, this session's close), as five arrays. Building an ``ExchangeCalendar`` costs ~0.3 s
# (pandas evaluates its holiday rules over 1970-2200) and its first minute lookup another ~0.1 s
# (every trading minute since 1990); a one-order ``ais review approve`` must stay under 2 s, and
# every sensor tick asks the same question. The table is derived from ``get_calendar`` and, when
# ``AIS_CALENDAR_CACHE_DIR`` is set, kept there per calendar, library version and range.

_NAT = np.iinfo(np.int64).min  # pandas' NaT as int64 nanoseconds


@dataclass(frozen=True)
class SessionTable:
    """Sessions (naive midnight labels) with their UTC opens, closes and breaks, int64 ns.

    Trading minutes follow exchange_calendars' default ``side="left"``: the open and the break's
    end are trading minutes, the close and the break's start are not.
    """

    name: str
    sessions: np.ndarray
    opens: np.ndarray
    closes: np.ndarray
    break_starts: np.ndarray
    break_ends: np.ndarray

    def _index_at(self, when: pd.Timestamp) -> int | None:
        """The session whose [open, close) holds ``when`` (a trading minute outside any break)."""
        ts = pd.Timestamp(when)
        if ts.tzinfo is None:
            raise ValueError("a session lookup needs a timezone-aware timestamp")
        ns = ts.tz_convert("UTC").floor("min").value
        if ns < self.opens[0] or ns > self.closes[-1]:
            raise ValueError(f"{ts} is outside the {self.name} calendar ({self.sessions.size} sessions held)")
        i = int(np.searchsorted(self.opens, ns, side="right")) - 1
        if i < 0 or ns >= self.closes[i]:
            return None
        if self.break_starts[i] != _NAT and self.break_starts[i] <= ns < self.break_ends[i]:
            return None
        return i

    def is_open(self, when: pd.Timestamp) -> bool:
        return self._index_at(when) is not None

    def session_close_at(self, when: pd.Timestamp) -> pd.Timestamp | None:
        """The UTC close of the session trading at ``when``; ``None`` when the market is closed."""
        i = self._index_at(when)
        return None if i is None else pd.Timestamp(int(self.closes[i]), tz="UTC")

    def session_after(self, day: date | pd.Timestamp) -> pd.Timestamp:
        """The first session strictly after ``day``."""
        ns = pd.Timestamp(day).normalize().value
        i = int(np.searchsorted(self.sessions, ns, side="right"))
        if i >= self.sessions.size:
            raise ValueError(f"no {self.name} session after {pd.Timestamp(day).date()} in the calendar")
        return pd.Timestamp(int(self.sessions[i]))

    def session_open(self, session: pd.Timestamp) -> pd.Timestamp:
        ns = pd.Timestamp(session).normalize().value
        i = int(np.searchsorted(self.sessions, ns))
        if i >= self.sessions.size or self.sessions[i] != ns:
            raise ValueError(f"{pd.Timestamp(session).date()} is not a {self.name} session")
        return pd.Timestamp(int(self.opens[i]), tz="UTC")


def _ns(values: pd.Series | pd.DatetimeIndex) -> np.ndarray:
    idx = pd.DatetimeIndex(values)
    if idx.tz is not None:
        idx = idx.tz_convert("UTC").tz_localize(None)
    return idx.as_unit("ns").asi8.copy()


def _table_from_calendar(name: str) -> SessionTable:
    cal = get_calendar(name)
    return SessionTable(name, _ns(cal.sessions), _ns(cal.opens), _ns(cal.closes), _ns(cal.break_starts),
                        _ns(cal.break_ends))


def _cache_file(name: str) -> Path | None:
    folder = os.environ.get(CALENDAR_CACHE_ENV)
    if not folder:
        return None
    from importlib.metadata import version

    stem = re.sub(r"[^A-Za-z0-9_-]", "_", name)
    return Path(folder) / f"{stem}-xcals{version('exchange_calendars')}-to{date.today().year + 2}.npz"


_FIELDS = ("sessions", "opens", "closes", "break_starts", "break_ends")


def _read_cached(path: Path, name: str) -> SessionTable | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = [np.asarray(data[f], dtype=np.int64) for f in _FIELDS]
    except (OSError, ValueError, KeyError):
        return None  # unreadable or from another layout: rebuilt from exchange_calendars
    n = arrays[0].size
    if n == 0 or any(a.size != n for a in arrays) or np.any(np.diff(arrays[0]) <= 0) or np.any(np.diff(arrays[1]) <= 0):
        return None
    return SessionTable(name, *arrays)


def _write_cached(path: Path, table: SessionTable) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, **{f: getattr(table, f) for f in _FIELDS})
        os.replace(tmp, path)  # readers see the old file or the whole new one
    except OSError:
        pass  # a read-only cache only costs speed


@lru_cache(maxsize=32)
def session_table(name: str) -> SessionTable:
    """The session table of ``name`` (see above): from the cache file when valid, else built."""
    path = _cache_file(name)
    if path is not None and path.exists():
        cached = _read_cached(path, name)
        if cached is not None:
            return cached
    table = _table_from_calendar(name)
    if path is not None:
        _write_cached(path, table)
    return table


def is_open_at(calendar: str, when: pd.Timestamp) -> bool:
    """Whether the market is open at a tz-aware instant (for the intraday path)."""
    ts = pd.Timestamp(when)
    if ts.tzinfo is None:
        raise ValueError("is_open_at needs a timezone-aware timestamp")
    return session_table(calendar).is_open(ts)
