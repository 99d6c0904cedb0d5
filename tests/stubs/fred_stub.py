"""A stub of FRED's series observations endpoint, in FRED's real wire format.

``GET /fred/series/observations?series_id&api_key&file_type=json&observation_start
&observation_end&sort_order&limit&offset`` → ``{"realtime_start", "realtime_end",
"observation_start", "observation_end", "units": "lin", "output_type": 1, "file_type": "json",
"order_by": "observation_date", "sort_order", "count", "offset", "limit", "observations":
[{"realtime_start", "realtime_end", "date", "value"}]}`` with ``"."`` for a missing value.
A wrong key gets FRED's 400 body (``error_code``/``error_message``); so does an unknown series.
Publication is modelled: an observation dated t is published on t + ``publication_lag_days``
(its ``realtime_start``); with ``realtime_end=R`` only observations published by R are returned,
like ALFRED's real-time periods. Without real-time parameters the vintage is ``REALTIME``.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from tests.stubs.http_stub import RecordedRequest, StubHTTPServer, StubResponse

OBSERVATIONS = "/fred/series/observations"
REALTIME = "2026-11-20"


def bad_key() -> dict[str, Any]:
    return {"error_code": 400, "error_message": "Bad Request.  The value for variable api_key is not registered."
            "  Read https://fred.stlouisfed.org/docs/api/api_key.html for more information."}


class FredStub:
    def __init__(self, *, api_key: str = "a" * 32, publication_lag_days: int = 1) -> None:
        self.server = StubHTTPServer()
        self.lag = timedelta(days=publication_lag_days)
        self.api_key = api_key
        self.series: dict[str, list[tuple[date, str]]] = {}
        self.server.route("GET", OBSERVATIONS, self._observations)

    @property
    def base_url(self) -> str:
        return self.server.base_url

    def add(self, series_id: str, values: list[tuple[date, str]]) -> None:
        self.series[series_id] = values

    def _observations(self, req: RecordedRequest) -> StubResponse:
        if req.param("api_key") != self.api_key:
            return StubResponse(status=400, body=bad_key())
        sid = req.param("series_id") or ""
        if sid not in self.series:
            return StubResponse(status=400, body={"error_code": 400,
                                                  "error_message": "Bad Request.  The series does not exist."})
        lo = date.fromisoformat(req.param("observation_start") or "1776-07-04")
        hi = date.fromisoformat(req.param("observation_end") or "9999-12-31")
        rows = [(d, v) for d, v in self.series[sid] if lo <= d <= hi]
        rt_end = req.param("realtime_end")
        if rt_end:
            rows = [(d, v) for d, v in rows if d + self.lag <= date.fromisoformat(rt_end)]
        limit, offset = int(req.param("limit") or 100_000), int(req.param("offset") or 0)
        page = rows[offset: offset + limit]
        return StubResponse(body={
            "realtime_start": req.param("realtime_start") or REALTIME, "realtime_end": rt_end or REALTIME,
            "observation_start": lo.isoformat(),
            "observation_end": hi.isoformat(), "units": "lin", "output_type": 1, "file_type": "json",
            "order_by": "observation_date", "sort_order": req.param("sort_order") or "asc", "count": len(rows),
            "offset": offset, "limit": limit,
            "observations": [{"realtime_start": (d + self.lag).isoformat() if rt_end else REALTIME,
                              "realtime_end": rt_end or REALTIME, "date": d.isoformat(), "value": v}
                             for d, v in page],
        })

    def __enter__(self) -> FredStub:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()
