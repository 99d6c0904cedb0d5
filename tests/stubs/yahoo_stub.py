"""A stub of the Yahoo Finance endpoints yfinance calls, in Yahoo's real wire format.

* ``GET /`` — what fc.yahoo.com answers: 404 with an ``A3`` cookie (yfinance's "basic" cookie).
* ``GET /v1/test/getcrumb`` — the crumb as plain text.
* ``GET /consent``, ``POST /v2/collectConsent``, ``GET /copyConsent`` — the "csrf" cookie
  strategy yfinance falls back to.
* ``GET /v8/finance/chart/{symbol}`` — ``{"chart": {"result": [{"meta", "timestamp",
  "indicators": {"quote": [{open, high, low, close, volume}], "adjclose": [{adjclose}]}}],
  "error": null}}``, honouring ``period1``/``period2`` like Yahoo; unknown symbols get Yahoo's
  404 body; a range without bars gets Yahoo's empty result (meta, no ``timestamp``).

Daily stamps follow Yahoo: the regular-session open in the exchange timezone for equities
(09:30 New York), midnight for crypto (UTC) and FX (London).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from tests.stubs.http_stub import RecordedRequest, StubHTTPServer, StubResponse

CHART = "/v8/finance/chart/{symbol}"
CRUMB = "/v1/test/getcrumb"
COOKIE = "/"
CRUMB_VALUE = "stubCrumb.42"
COOKIE_VALUE = "d=stub-a3-cookie"


@dataclass
class YahooBar:
    ts: int  # epoch seconds, as Yahoo sends them
    open: float | None
    high: float | None
    low: float | None
    close: float | None
    volume: int | None
    adjclose: float | None = None


@dataclass
class _Instrument:
    symbol: str
    bars: list[YahooBar]
    tz: str
    regular_open: time
    regular_close: time
    instrument_type: str
    currency: str
    exchange: str


def stamp(day: date, at: time, tz: str) -> int:
    """Epoch seconds of ``day`` at local time ``at`` in ``tz``."""
    return int(datetime.combine(day, at, ZoneInfo(tz)).timestamp())


def make_daily_bars(days: list[date], *, tz: str, at: time, first_close: float = 100.0) -> list[YahooBar]:
    """Deterministic, OHLC-consistent bars, one per day, stamped like Yahoo (``at`` local time)."""
    bars = []
    for i, day in enumerate(days):
        close = round(first_close + i * 1.25, 4)
        open_ = round(close - 0.5, 4)
        bars.append(
            YahooBar(
                ts=stamp(day, at, tz),
                open=open_,
                high=round(close + 1.0, 4),
                low=round(open_ - 1.0, 4),
                close=close,
                volume=1_000_000 + 1000 * i,
                adjclose=round(close * 0.98, 4),
            )
        )
    return bars


class YahooStub:
    """Yahoo endpoints on a ``StubHTTPServer``. ``require_crumb`` makes the chart API answer
    401 "Invalid Crumb" unless the request carries the crumb and cookie that the stub issued."""

    def __init__(self, server: StubHTTPServer | None = None, *, require_crumb: bool = True) -> None:
        self.server = server or StubHTTPServer()
        self.require_crumb = require_crumb
        self.instruments: dict[str, _Instrument] = {}
        self.server.route("GET", COOKIE, self._cookie)
        self.server.route("GET", CRUMB, self._crumb)
        self.server.route("GET", "/consent", self._consent_form)
        self.server.route("POST", "/v2/collectConsent", StubResponse(status=200, body="ok"))
        self.server.route("GET", "/copyConsent", StubResponse(status=200, body="ok"))
        self.server.route("GET", CHART, self._chart)

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return self.server.base_url

    def __enter__(self) -> YahooStub:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    # -- data -------------------------------------------------------------------------------

    def add_instrument(
        self,
        symbol: str,
        bars: list[YahooBar],
        *,
        tz: str = "America/New_York",
        regular_open: time = time(9, 30),
        regular_close: time = time(16, 0),
        instrument_type: str = "EQUITY",
        currency: str = "USD",
        exchange: str = "NMS",
    ) -> None:
        self.instruments[symbol.upper()] = _Instrument(
            symbol.upper(), sorted(bars, key=lambda b: b.ts), tz, regular_open, regular_close,
            instrument_type, currency, exchange,
        )  # fmt: skip

    def add_equity(self, symbol: str, days: list[date], **kw: Any) -> list[YahooBar]:
        bars = make_daily_bars(days, tz="America/New_York", at=time(9, 30), **kw)
        self.add_instrument(symbol, bars)
        return bars

    def add_crypto(self, symbol: str, days: list[date], **kw: Any) -> list[YahooBar]:
        bars = make_daily_bars(days, tz="UTC", at=time(0, 0), **kw)
        self.add_instrument(
            symbol, bars, tz="UTC", regular_open=time(0, 0), regular_close=time(23, 59),
            instrument_type="CRYPTOCURRENCY", exchange="CCC",
        )  # fmt: skip
        return bars

    def chart_requests(self, symbol: str | None = None) -> list[RecordedRequest]:
        reqs = self.server.requests_for(CHART)
        return [r for r in reqs if symbol is None or r.path_params.get("symbol") == symbol]

    # -- handlers ---------------------------------------------------------------------------

    def _cookie(self, req: RecordedRequest) -> StubResponse:
        # fc.yahoo.com really answers 404 and sets the A3 cookie anyway
        return StubResponse(
            status=404,
            body="<html><body>404</body></html>",
            headers={"Set-Cookie": f"A3={COOKIE_VALUE}; Path=/; HttpOnly; SameSite=None"},
        )

    def _crumb(self, req: RecordedRequest) -> StubResponse:
        return StubResponse(status=200, body=CRUMB_VALUE)

    def _consent_form(self, req: RecordedRequest) -> StubResponse:
        html = (
            '<html><body><form method="post" action="/v2/collectConsent">'
            '<input type="hidden" name="csrfToken" value="stub-csrf"/>'
            '<input type="hidden" name="sessionId" value="stub-session"/>'
            "</form></body></html>"
        )
        return StubResponse(status=200, body=html, headers={"Content-Type": "text/html"})

    def _chart(self, req: RecordedRequest) -> StubResponse:
        symbol = req.path_params["symbol"].upper()
        if self.require_crumb and (
            req.param("crumb") != CRUMB_VALUE or COOKIE_VALUE not in req.headers.get("cookie", "")
        ):
            return StubResponse(
                status=401,
                body={
                    "finance": {
                        "result": None,
                        "error": {"code": "Unauthorized", "description": "Invalid Crumb"},
                    }
                },
            )
        inst = self.instruments.get(symbol)
        if inst is None:
            return StubResponse(
                status=404,
                body={"chart": {"result": None, "error": {
                    "code": "Not Found", "description": "No data found, symbol may be delisted"}}},
            )  # fmt: skip
        p1 = int(req.param("period1") or 0)
        p2 = int(req.param("period2") or 2**40)
        bars = [b for b in inst.bars if p1 <= b.ts < p2]
        return StubResponse(status=200, body=self.chart_body(inst, bars))

    @staticmethod
    def chart_body(inst: _Instrument, bars: list[YahooBar]) -> dict[str, Any]:
        tz = ZoneInfo(inst.tz)
        last_day = (
            datetime.fromtimestamp(bars[-1].ts, tz).date() if bars else datetime.fromtimestamp(0, tz).date()
        )
        open_ts = stamp(last_day, inst.regular_open, inst.tz)
        close_ts = stamp(last_day, inst.regular_close, inst.tz)
        offset = int(datetime.fromtimestamp(open_ts, tz).utcoffset().total_seconds())  # type: ignore[union-attr]
        abbrev = datetime.fromtimestamp(open_ts, tz).tzname()

        def period(start: int, end: int) -> dict[str, Any]:
            return {"timezone": abbrev, "start": start, "end": end, "gmtoffset": offset}

        meta: dict[str, Any] = {
            "currency": inst.currency,
            "symbol": inst.symbol,
            "exchangeName": inst.exchange,
            "fullExchangeName": inst.exchange,
            "instrumentType": inst.instrument_type,
            "firstTradeDate": bars[0].ts if bars else None,
            "regularMarketTime": close_ts,
            "hasPrePostMarketData": inst.instrument_type == "EQUITY",
            "gmtoffset": offset,
            "timezone": abbrev,
            "exchangeTimezoneName": inst.tz,
            "regularMarketPrice": bars[-1].close if bars else None,
            "chartPreviousClose": bars[0].close if bars else None,
            "priceHint": 2,
            "currentTradingPeriod": {
                "pre": period(open_ts - 5 * 3600 - 1800, open_ts),
                "regular": period(open_ts, close_ts),
                "post": period(close_ts, close_ts + 4 * 3600),
            },
            "dataGranularity": "1d",
            "range": "",
            "validRanges": ["1d", "5d", "1mo", "3mo", "6mo", "1y", "2y", "5y", "10y", "ytd", "max"],
        }
        if not bars:  # Yahoo's shape for "no bars in this range": meta only, no timestamp
            return {
                "chart": {
                    "result": [{"meta": meta, "indicators": {"quote": [{}], "adjclose": [{}]}}],
                    "error": None,
                }
            }
        return {
            "chart": {
                "result": [
                    {
                        "meta": meta,
                        "timestamp": [b.ts for b in bars],
                        "indicators": {
                            "quote": [
                                {
                                    "open": [b.open for b in bars],
                                    "high": [b.high for b in bars],
                                    "low": [b.low for b in bars],
                                    "close": [b.close for b in bars],
                                    "volume": [b.volume for b in bars],
                                }
                            ],
                            "adjclose": [{"adjclose": [b.adjclose for b in bars]}],
                        },
                    }
                ],
                "error": None,
            }
        }


def trading_days(first: date, count: int) -> list[date]:
    """``count`` weekdays from ``first`` (holidays ignored: enough for wire-format tests)."""
    out, day = [], first
    while len(out) < count:
        if day.weekday() < 5:
            out.append(day)
        day += timedelta(days=1)
    return out
