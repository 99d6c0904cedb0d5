"""Polygon.io daily aggregates over REST (§A2, §A5), through the shared HTTP client.

``GET /v2/aggs/ticker/{ticker}/range/1/day/{from}/{to}?adjusted=true&sort=asc&limit=50000&apiKey=…``
answers ``{"ticker", "status": "OK"|"DELAYED", "resultsCount", "results": [{"t", "o", "h",
"l", "c", "v", "vw", "n"}], "next_url"?}``. ``next_url`` (absolute, without the key) is
followed until absent; the key is appended again on every page. ``t`` is the start of the
aggregate window in ms since the epoch: midnight New York for stocks, midnight UTC for
crypto and FX. Such rows get the naive session date; any other stamp stays tz-aware so that
normalization rejects it as intraday. ``adjusted=true`` already applies splits, so
``adj_close`` is not delivered (normalization then uses the close).

Tickers: stocks as given (``BRK-B`` → ``BRK.B``), crypto ``X:BTCUSD``, FX ``C:EURUSD``.
"""

from __future__ import annotations

from datetime import date
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd

from ais_pipelines.core.asset_classes import AssetClass
from ais_pipelines.market_data.base import (
    FetchResult,
    InstrumentRequest,
    ProviderEmptyError,
    ProviderMalformedError,
    ProviderRejectedError,
    dated_raw_bars,
)
from ais_pipelines.market_data.http import HttpProviderClient

PROVIDER = "polygon"
DEFAULT_BASE_URL = "https://api.polygon.io"
AGGS_PATH = "/v2/aggs/ticker/{ticker}/range/1/day/{start}/{end}"
PAGE_LIMIT = 50_000
MAX_PAGES = 200  # a next_url loop must end
DAILY_STAMP_ZONES: dict[AssetClass, tuple[str, ...]] = {
    AssetClass.STOCKS: ("America/New_York",),
    AssetClass.CRYPTO: ("UTC",),
    AssetClass.FX: ("UTC",),
}
_QUOTES = ("USDT", "USDC", "USD", "EUR", "GBP", "JPY", "BTC", "ETH")


def _pair(s: str) -> str:
    if "/" in s or "-" in s:
        base, _, quote = s.replace("-", "/").partition("/")
        return f"{base}{quote}"
    return s


def to_polygon_ticker(symbol: str, asset_class: AssetClass) -> str:
    """Our spelling → Polygon's ticker, or ``ProviderRejectedError`` for what it does not serve."""
    s = symbol.strip().upper()
    if asset_class is AssetClass.CRYPTO:
        pair = _pair(s.removeprefix("X:"))
        if not any(pair.endswith(q) and len(pair) > len(q) for q in _QUOTES):
            pair += "USD"
        return f"X:{pair}"
    if asset_class is AssetClass.FX:
        pair = _pair(s.removeprefix("C:").removesuffix("=X"))
        if len(pair) != 6:
            raise ProviderRejectedError(f"{symbol}: not a currency pair", provider=PROVIDER)
        return f"C:{pair}"
    if asset_class is AssetClass.STOCKS:
        if "=" in s or "^" in s:
            raise ProviderRejectedError(f"{symbol}: not a Polygon stock ticker", provider=PROVIDER)
        return s.replace("-", ".")
    raise ProviderRejectedError(f"{symbol}: Polygon does not serve {asset_class} here", provider=PROVIDER)


def _session_date(ts: pd.Timestamp, zones: tuple[str, ...]) -> pd.Timestamp:
    for zone in zones:
        local = ts.tz_convert(ZoneInfo(zone))
        if local.hour == 0 and local.minute == 0 and local.second == 0:
            return pd.Timestamp(local.date())
    return ts


def parse_aggs(results: list[Any], symbol: str, asset_class: AssetClass, start: date, end: date) -> tuple[pd.DataFrame, int]:
    """Polygon aggregate dicts → raw bar frame and the count of non-daily rows."""
    zones = DAILY_STAMP_ZONES[asset_class]
    try:
        stamps = [pd.Timestamp(int(r["t"]), unit="ms", tz="UTC") for r in results]
        values = {k: [r.get(k) for r in results] for k in ("o", "h", "l", "c", "v")}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ProviderMalformedError(f"{symbol}: malformed Polygon aggregate ({exc!r})", provider=PROVIDER) from exc
    frame = pd.DataFrame({"ts": stamps, "open": values["o"], "high": values["h"], "low": values["l"],
                          "close": values["c"], "volume": values["v"]})
    cols = ["open", "high", "low", "close", "volume"]
    frame[cols] = frame[cols].apply(pd.to_numeric, errors="coerce").astype("float64")
    dates = [_session_date(t, zones) for t in frame["ts"]]
    local = [d.date() if d.tzinfo is None else d.tz_convert(ZoneInfo(zones[0])).date() for d in dates]
    keep = [start <= d <= end for d in local]
    frame = frame.loc[keep].reset_index(drop=True)
    dates = [d for d, k in zip(dates, keep, strict=True) if k]
    return dated_raw_bars(frame, dates, symbol)


class PolygonProvider:
    """Daily bars from Polygon's aggregates API. Raises ``ProviderError`` subclasses only."""

    name = PROVIDER

    def __init__(self, api_key: str, base_url: str | None = None, *, timeout_s: float = 10,
                 max_attempts: int = 4, backoff_initial_s: float = 0.5, backoff_max_s: float = 8,
                 max_retry_after_s: float = 60, sleep: Any = None) -> None:
        if not api_key:
            raise ValueError("Polygon needs an API key (POLYGON_API_KEY)")
        self._api_key = api_key
        kw = {"sleep": sleep} if sleep is not None else {}
        self.http = HttpProviderClient(
            PROVIDER, base_url or DEFAULT_BASE_URL, timeout_s=timeout_s, max_attempts=max_attempts,
            backoff_initial_s=backoff_initial_s, backoff_max_s=backoff_max_s,
            max_retry_after_s=max_retry_after_s, secret_params=("apiKey",), **kw,
        )

    def __repr__(self) -> str:  # never print the key
        return f"PolygonProvider(base_url={self.http.base_url!r})"

    def fetch_daily_bars(self, request: InstrumentRequest, start: date, end: date) -> FetchResult:
        ticker = to_polygon_ticker(request.symbol, request.asset_class)
        first = len(self.http.exchanges)
        url: str | None = AGGS_PATH.format(ticker=ticker, start=start.isoformat(), end=end.isoformat())
        params: dict[str, Any] = {"adjusted": "true", "sort": "asc", "limit": PAGE_LIMIT}
        pages: list[Any] = []
        attempts = 0
        while url is not None:
            if len(pages) >= MAX_PAGES:
                raise ProviderMalformedError(f"{ticker}: more than {MAX_PAGES} pages (next_url loop?)",
                                             provider=PROVIDER)
            doc, n = self.http.get_json(url, {**params, "apiKey": self._api_key})
            attempts += n
            if not isinstance(doc, dict) or "status" not in doc:
                raise ProviderMalformedError(f"{ticker}: not a Polygon aggregates answer", provider=PROVIDER)
            if doc["status"] not in ("OK", "DELAYED"):
                raise ProviderRejectedError(f"{ticker}: Polygon status {doc['status']}: "
                                            f"{doc.get('error') or doc.get('message')}", provider=PROVIDER)
            if not isinstance(doc.get("results", []), list):
                raise ProviderMalformedError(f"{ticker}: 'results' is not a list", provider=PROVIDER)
            pages.append(doc)
            url = doc.get("next_url") or None
            params = {}  # next_url carries the cursor and the original query
        results = [r for p in pages for r in p.get("results", [])]
        if not results:
            raise ProviderEmptyError(f"{request.symbol}: Polygon returned no bars for {start}..{end}",
                                     provider=PROVIDER)
        frame, non_daily = parse_aggs(results, request.symbol, request.asset_class, start, end)
        if frame.empty:
            raise ProviderEmptyError(f"{request.symbol}: no Polygon bars inside {start}..{end}", provider=PROVIDER)
        lineage = {
            "provider": PROVIDER, "client": "ais http (requests)", "ticker": ticker,
            "urls": [e.url for e in self.http.exchanges[first:]], "pages": len(pages), "attempts": attempts,
            "adjusted": True, "daily_stamp_zones": list(DAILY_STAMP_ZONES[request.asset_class]),
            "non_daily_rows": non_daily, "rows": len(frame),
            "delayed": any(p.get("status") == "DELAYED" for p in pages),
        }
        return FetchResult(symbol=request.symbol, provider=PROVIDER, frame=frame, raw=pages, lineage=lineage)
