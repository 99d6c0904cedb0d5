"""Injected clocks (§I5).

The core never reads wall-clock time: every component that needs "now" takes a ``Clock``.
Tests and the demo drive a ``FixedClock``/``SimulatedClock`` (a simulated session after the last
sample bar, so the demo trades on a Saturday night too); only the Alpaca edge uses
``SystemClock``, where the real exchange clock applies.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import pandas as pd


def ensure_utc(value: datetime) -> datetime:
    """Refuse naive datetimes (ambiguous instants) and normalise aware ones to UTC."""
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise ValueError(f"timezone-aware datetime required, got naive {value!r}")
    return value.astimezone(UTC)


@runtime_checkable
class Clock(Protocol):
    def now(self) -> datetime:
        """The current instant, timezone-aware, in UTC."""
        ...


class FixedClock:
    """A clock that only moves when told to: deterministic tests and replays."""

    def __init__(self, start: datetime):
        self._now = ensure_utc(start)

    def now(self) -> datetime:
        return self._now

    def set(self, when: datetime) -> None:
        when = ensure_utc(when)
        # Time never runs backwards: an event log ordered by clock time must stay ordered.
        if when < self._now:
            raise ValueError(f"clock cannot move backwards from {self._now} to {when}")
        self._now = when

    def advance(self, delta: timedelta | None = None, **kwargs: float) -> datetime:
        """Move forward by ``delta`` or by timedelta keyword arguments; return the new now."""
        step = delta if delta is not None else timedelta(**kwargs)
        if step < timedelta(0):
            raise ValueError("clock cannot move backwards")
        self._now = self._now + step
        return self._now


class SimulatedClock(FixedClock):
    """The market clock of the embedded sample market and paper broker (§I5).

    Same mechanics as ``FixedClock``; built from a calendar so the demo can place itself inside
    a real (simulated) trading session regardless of today's date.
    """

    @classmethod
    def session_after(
        cls, last_bar_session: date | pd.Timestamp, calendar: str = "XNYS", minutes_after_open: int = 30
    ) -> SimulatedClock:
        """A clock ``minutes_after_open`` into the first session after ``last_bar_session``."""
        from ais_pipelines.core.calendars import session_table

        table = session_table(calendar)
        open_ = table.session_open(table.session_after(last_bar_session))  # tz-aware UTC
        return cls(open_.to_pydatetime() + timedelta(minutes=minutes_after_open))


class SystemClock:
    """Wall-clock time. Only for the live-exchange edge (Alpaca paper); never used by tests."""

    def now(self) -> datetime:
        return datetime.now(UTC)
