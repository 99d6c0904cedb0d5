"""The wall clock as a resource, so tests and the demo can fix "now" (§I5)."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
import pandas as pd


class ClockResource(dg.ConfigurableResource):
    """``fixed_now`` (ISO-8601 with offset) pins the clock; unset means the system clock."""

    fixed_now: str | None = None

    def now(self) -> datetime:
        if self.fixed_now:
            ts = pd.Timestamp(self.fixed_now)
            if ts.tzinfo is None:
                raise ValueError(f"fixed_now must carry a timezone offset, got {self.fixed_now!r}")
            return ts.to_pydatetime()
        return datetime.now(UTC)
