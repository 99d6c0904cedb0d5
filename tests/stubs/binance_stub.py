"""A stub of Binance's public spot klines endpoint, in Binance's real wire format.

``GET /api/v3/klines?symbol&interval=1d&startTime&endTime&limit`` → a JSON array of
``[openTime, "o", "h", "l", "c", "v", closeTime, "quoteVolume", trades, "takerBase",
"takerQuote", "0"]`` (prices as strings), at most ``limit`` (default 500, max 1000) klines from
``startTime``. An unknown symbol gets Binance's 400 ``{"code": -1121, "msg": "Invalid symbol."}``.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from typing import Any

from tests.stubs.http_stub import RecordedRequest, StubHTTPServer, StubResponse

KLINES = "/api/v3/klines"
DAY_MS = 86_400_000


def make_klines(days: list[date], first_close: float = 40_000.0) -> list[list[Any]]:
    out = []
    for i, day in enumerate(days):
        t = int(datetime.combine(day, time(), UTC).timestamp() * 1000)
        c = first_close + 10 * i
        o = c - 5
        out.append([t, f"{o:.8f}", f"{c + 20:.8f}", f"{o - 20:.8f}", f"{c:.8f}", f"{100 + i:.8f}", t + DAY_MS - 1,
                    f"{(100 + i) * c:.8f}", 1000 + i, "50.00000000", f"{50 * c:.8f}", "0"])
    return out


class BinanceStub:
    def __init__(self) -> None:
        self.server = StubHTTPServer()
        self.klines: dict[str, list[list[Any]]] = {}
        self.server.route("GET", KLINES, self._klines)

    @property
    def base_url(self) -> str:
        return self.server.base_url

    def add(self, symbol: str, rows: list[list[Any]]) -> None:
        self.klines[symbol] = rows

    def _klines(self, req: RecordedRequest) -> StubResponse:
        symbol = req.param("symbol") or ""
        if symbol not in self.klines:
            return StubResponse(status=400, body={"code": -1121, "msg": "Invalid symbol."})
        if req.param("interval") not in ("1d",):
            return StubResponse(status=400, body={"code": -1120, "msg": "Invalid interval."})
        limit = min(int(req.param("limit", "500") or 500), 1000)
        lo = int(req.param("startTime", "0") or 0)
        hi = int(req.param("endTime", str(2**62)) or 2**62)
        rows = [r for r in self.klines[symbol] if lo <= r[0] <= hi][:limit]
        return StubResponse(body=rows)

    def __enter__(self) -> BinanceStub:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()
