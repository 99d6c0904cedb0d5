"""A stub of Alpaca's market-data bars endpoints, in Alpaca's real wire format.

* ``GET /v2/stocks/bars?symbols=AAPL,MSFT&timeframe=1Day&start&end&limit&page_token&adjustment&feed``
  → ``{"bars": {"AAPL": [{"t", "o", "h", "l", "c", "v", "n", "vw"}, ...]}, "next_page_token": ...}``
* ``GET /v2/stocks/{symbol}/bars`` (single symbol)
  → ``{"bars": [...], "symbol": "AAPL", "next_page_token": ...}``
* ``GET /v1beta3/crypto/us/bars?symbols=BTC/USD&...`` → same shape as the multi-symbol stocks one.

Stocks need the ``APCA-API-KEY-ID``/``APCA-API-SECRET-KEY`` headers (401 otherwise, with Alpaca's
body); crypto accepts anonymous calls but rejects wrong keys. ``page_size`` (smaller than the
10 000 alpaca-py asks for) forces pagination; tokens are opaque base64 like Alpaca's.
Errors are scripted on the underlying ``StubHTTPServer`` (``stub.server.fail(...)``).
"""

from __future__ import annotations

import base64
from datetime import date, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

from tests.stubs.http_stub import RecordedRequest, StubHTTPServer, StubResponse

STOCK_BARS = "/v2/stocks/bars"
STOCK_BARS_SINGLE = "/v2/stocks/{symbol}/bars"
CRYPTO_BARS = "/v1beta3/crypto/{loc}/bars"
UNAUTHORIZED = {"code": 40110000, "message": "request is not authorized"}


def rfc3339(ts: datetime) -> str:
    return ts.astimezone(ZoneInfo("UTC")).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_daily_bars(days: list[date], *, tz: str, first_close: float = 50.0) -> list[dict[str, Any]]:
    """Deterministic bars stamped at local midnight of ``tz`` (NY for stocks, UTC for crypto)."""
    out = []
    for i, day in enumerate(days):
        close = round(first_close + i * 0.75, 4)
        open_ = round(close - 0.25, 4)
        out.append(
            {
                "t": rfc3339(datetime.combine(day, time(), ZoneInfo(tz))),
                "o": open_,
                "h": round(close + 0.5, 4),
                "l": round(open_ - 0.5, 4),
                "c": close,
                "v": 20_000 + 100 * i,
                "n": 150 + i,
                "vw": round((open_ + close) / 2, 4),
            }
        )
    return out


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    if len(value) == 10:  # YYYY-MM-DD
        return datetime.combine(date.fromisoformat(value), time(), ZoneInfo("UTC"))
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _token(offset: int) -> str:
    return base64.b64encode(f"stub:{offset}".encode()).decode()


def _offset(token: str | None) -> int:
    if not token:
        return 0
    return int(base64.b64decode(token).decode().split(":", 1)[1])


class AlpacaDataStub:
    """Alpaca bars endpoints on a ``StubHTTPServer``."""

    def __init__(
        self,
        server: StubHTTPServer | None = None,
        *,
        api_key: str = "stub-key",
        secret_key: str = "stub-secret",
        page_size: int = 10_000,
    ) -> None:
        self.server = server or StubHTTPServer()
        self.api_key = api_key
        self.secret_key = secret_key
        self.page_size = page_size
        self.stocks: dict[str, list[dict[str, Any]]] = {}
        self.crypto: dict[str, list[dict[str, Any]]] = {}
        self.server.route("GET", STOCK_BARS, self._stock_bars)
        self.server.route("GET", STOCK_BARS_SINGLE, self._stock_bars_single)
        self.server.route("GET", CRYPTO_BARS, self._crypto_bars)

    @property
    def base_url(self) -> str:
        return self.server.base_url

    def __enter__(self) -> AlpacaDataStub:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    # -- data -------------------------------------------------------------------------------

    def add_stock(self, symbol: str, bars: list[dict[str, Any]]) -> None:
        self.stocks[symbol] = sorted(bars, key=lambda b: b["t"])

    def add_crypto(self, symbol: str, bars: list[dict[str, Any]]) -> None:
        self.crypto[symbol] = sorted(bars, key=lambda b: b["t"])

    # -- handlers ---------------------------------------------------------------------------

    def _auth(self, req: RecordedRequest, *, required: bool) -> StubResponse | None:
        key, secret = req.headers.get("apca-api-key-id"), req.headers.get("apca-api-secret-key")
        if key is None and secret is None and not required:
            return None
        if key != self.api_key or secret != self.secret_key:
            return StubResponse(status=401, body=UNAUTHORIZED)
        return None

    def _check(self, req: RecordedRequest) -> StubResponse | None:
        if req.param("timeframe") not in ("1Day", "1D"):
            return StubResponse(status=400, body={"code": 42210000, "message": "invalid timeframe"})
        try:
            _parse_time(req.param("start"))
            _parse_time(req.param("end"))
        except ValueError:
            return StubResponse(status=400, body={"code": 42210000, "message": "invalid start or end"})
        return None

    def _select(
        self, book: dict[str, list[dict[str, Any]]], symbols: list[str], req: RecordedRequest
    ) -> tuple:
        start, end = _parse_time(req.param("start")), _parse_time(req.param("end"))
        items = [
            (sym, bar)
            for sym in symbols
            for bar in book.get(sym, [])
            if (start is None or _parse_time(bar["t"]) >= start)
            and (end is None or _parse_time(bar["t"]) <= end)
        ]
        limit = min(int(req.param("limit") or 1000), self.page_size)
        offset = _offset(req.param("page_token"))
        page = items[offset : offset + limit]
        token = _token(offset + limit) if offset + limit < len(items) else None
        return page, token

    def _multi(self, book: dict[str, list[dict[str, Any]]], req: RecordedRequest) -> StubResponse:
        symbols = [s for s in (req.param("symbols") or "").split(",") if s]
        if not symbols:
            return StubResponse(status=400, body={"code": 40010001, "message": "symbols is required"})
        page, token = self._select(book, symbols, req)
        bars: dict[str, list[dict[str, Any]]] = {}
        for sym, bar in page:
            bars.setdefault(sym, []).append(bar)
        return StubResponse(body={"bars": bars, "next_page_token": token})

    def _stock_bars(self, req: RecordedRequest) -> StubResponse:
        return self._auth(req, required=True) or self._check(req) or self._multi(self.stocks, req)

    def _stock_bars_single(self, req: RecordedRequest) -> StubResponse:
        denied = self._auth(req, required=True) or self._check(req)
        if denied:
            return denied
        symbol = req.path_params["symbol"]
        page, token = self._select(self.stocks, [symbol], req)
        return StubResponse(body={"bars": [b for _, b in page], "symbol": symbol, "next_page_token": token})

    def _crypto_bars(self, req: RecordedRequest) -> StubResponse:
        if req.path_params["loc"] != "us":
            return StubResponse(status=404, body={"message": "Not Found"})
        return self._auth(req, required=False) or self._check(req) or self._multi(self.crypto, req)
