"""A stub of Polygon's daily aggregates endpoint, in Polygon's real wire format.

``GET /v2/aggs/ticker/{ticker}/range/1/day/{from}/{to}?adjusted&sort&limit&apiKey`` →
``{"ticker", "queryCount", "resultsCount", "adjusted", "results": [{"v", "vw", "o", "c", "h",
"l", "t", "n"}], "status": "OK", "request_id", "count", "next_url"?}``. ``from``/``to`` are
dates (or ms timestamps on a ``next_url``); ``page_size`` forces pagination through an
absolute ``next_url`` on ``https://api.polygon.io`` with a ``cursor`` and *without* the key,
like Polygon. A wrong key gets Polygon's 401 body; a range without bars has no ``results``.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, date, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

from tests.stubs.http_stub import RecordedRequest, StubHTTPServer, StubResponse

AGGS = "/v2/aggs/ticker/{ticker}/range/1/day/{start}/{end}"
UNKNOWN_KEY = {"status": "ERROR", "request_id": "stub-req", "error": "Unknown API Key"}


def ms(day: date, tz: str) -> int:
    return int(datetime.combine(day, time(), ZoneInfo(tz)).timestamp() * 1000)


def make_aggs(days: list[date], *, tz: str, first_close: float = 100.0) -> list[dict[str, Any]]:
    out = []
    for i, day in enumerate(days):
        c = round(first_close + i, 4)
        o = round(c - 0.5, 4)
        out.append({"v": 1_000_000 + i, "vw": round((o + c) / 2, 4), "o": o, "c": c, "h": round(c + 1, 4),
                    "l": round(o - 1, 4), "t": ms(day, tz), "n": 5000 + i})
    return out


def _bound(value: str, *, end: bool) -> int:
    if value.isdigit():
        return int(value)
    d = date.fromisoformat(value)
    t = int(datetime.combine(d, time(), UTC).timestamp() * 1000)
    # Polygon treats a date bound as the whole (exchange) day: be generous on both sides
    return t + (86_400_000 * 2 if end else -86_400_000)


class PolygonStub:
    def __init__(self, *, api_key: str = "poly-key", page_size: int = 50_000) -> None:
        self.server = StubHTTPServer()
        self.api_key = api_key
        self.page_size = page_size
        self.aggs: dict[str, list[dict[str, Any]]] = {}
        self.server.route("GET", AGGS, self._aggs)

    @property
    def base_url(self) -> str:
        return self.server.base_url

    def add(self, ticker: str, bars: list[dict[str, Any]]) -> None:
        self.aggs[ticker] = bars

    def _aggs(self, req: RecordedRequest) -> StubResponse:
        if req.param("apiKey") != self.api_key:
            return StubResponse(status=401, body=UNKNOWN_KEY)
        ticker = req.path_params["ticker"]
        lo, hi = _bound(req.path_params["start"], end=False), _bound(req.path_params["end"], end=True)
        offset = 0
        if req.param("cursor"):  # the cursor carries the position in the original query
            state = json.loads(base64.b64decode(req.param("cursor") or ""))
            offset, lo = state["offset"], state["lo"]
        bars = [b for b in self.aggs.get(ticker, []) if lo <= b["t"] < hi]
        page = bars[offset: offset + self.page_size]
        body: dict[str, Any] = {"ticker": ticker, "queryCount": len(page), "resultsCount": len(page),
                                "adjusted": req.param("adjusted") == "true", "status": "OK",
                                "request_id": f"stub-{offset}", "count": len(page)}
        if page:
            body["results"] = page
        if offset + self.page_size < len(bars):
            cursor = base64.b64encode(json.dumps({"offset": offset + self.page_size, "lo": lo}).encode()).decode()
            nxt = bars[offset + self.page_size]["t"]
            body["next_url"] = (f"https://api.polygon.io/v2/aggs/ticker/{ticker}/range/1/day/{nxt}/"
                                f"{req.path_params['end']}?cursor={cursor}")
        return StubResponse(body=body)

    def __enter__(self) -> PolygonStub:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()
