"""Binance spot klines for crypto history (§A2, §A5), through the shared HTTP client.

``GET /api/v3/klines?symbol=BTCUSDT&interval=1d&startTime=…&endTime=…&limit=1000`` (public, no
key) answers a JSON array of arrays ``[openTime, "open", "high", "low", "close", "volume",
closeTime, "quoteVolume", trades, "takerBase", "takerQuote", "ignore"]``; prices are strings,
times ms since the epoch. At most ``limit`` klines per call: the client pages by moving
``startTime`` past the last ``openTime`` until a short page or ``endTime``. Errors carry
Binance's own body ``{"code": -1121, "msg": "Invalid symbol."}`` (HTTP 400: not retried);
429 comes with ``Retry-After`` (honoured), 418 is an IP ban (not retried).

Daily klines open at 00:00 UTC: the crypto calendar is 24/7 (every day a session). A kline
that does not open at midnight UTC stays tz-aware so normalization rejects it as intraday.
The still-open kline of today (``closeTime`` in the future of ``end``) is dropped by the window.

Symbols: ``BTC/USD``, ``BTC-USD``, ``BTCUSD`` → ``BTCUSDT`` (Binance's spot book quotes USD in
USDT; lineage records the mapping), other quotes kept (``ETH/BTC`` → ``ETHBTC``).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

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

PROVIDER = "binance"
DEFAULT_BASE_URL = "https://api.binance.com"
KLINES_PATH = "/api/v3/klines"
PAGE_LIMIT = 1000
DAY_MS = 86_400_000
_QUOTES = ("USDT", "USDC", "FDUSD", "BUSD", "USD", "EUR", "BTC", "ETH", "BNB")


def to_binance_symbol(symbol: str, asset_class: AssetClass) -> str:
    """Our spelling → Binance's spot symbol; USD becomes USDT. Non-crypto is rejected."""
    if asset_class is not AssetClass.CRYPTO:
        raise ProviderRejectedError(f"{symbol}: Binance serves crypto only", provider=PROVIDER)
    s = symbol.strip().upper()
    if "/" in s or "-" in s:
        base, _, quote = s.replace("-", "/").partition("/")
    else:
        quote = next((q for q in _QUOTES if s.endswith(q) and len(s) > len(q)), "USD")
        base = s[: -len(quote)] if s.endswith(quote) else s
    if quote == "USD":
        quote = "USDT"
    return f"{base}{quote}"


def _ms(day: date) -> int:
    return int(datetime.combine(day, time(), UTC).timestamp() * 1000)


def parse_klines(rows: list[Any], symbol: str, start: date, end: date) -> tuple[pd.DataFrame, int]:
    """Kline arrays → raw bar frame (daily rows dated, others tz-aware) and the non-daily count."""
    try:
        stamps = [pd.Timestamp(int(r[0]), unit="ms", tz="UTC") for r in rows]
        cols = {name: [r[i] for r in rows] for i, name in enumerate(["_t", "open", "high", "low", "close", "volume"])}
    except (IndexError, TypeError, ValueError, KeyError) as exc:
        raise ProviderMalformedError(f"{symbol}: malformed Binance kline ({exc!r})", provider=PROVIDER) from exc
    frame = pd.DataFrame({"ts": stamps, **{k: v for k, v in cols.items() if k != "_t"}})
    values = ["open", "high", "low", "close", "volume"]
    frame[values] = frame[values].apply(pd.to_numeric, errors="coerce").astype("float64")
    frame = frame.loc[[start <= t.date() <= end for t in frame["ts"]]].reset_index(drop=True)
    dates = [pd.Timestamp(t.date()) if t.time() == time(0, 0) else t for t in frame["ts"]]
    return dated_raw_bars(frame, dates, symbol)


class BinanceProvider:
    """Daily crypto bars from Binance's public klines. Raises ``ProviderError`` subclasses only."""

    name = PROVIDER

    def __init__(self, base_url: str | None = None, *, timeout_s: float = 10, max_attempts: int = 4,
                 backoff_initial_s: float = 0.5, backoff_max_s: float = 8, max_retry_after_s: float = 60,
                 page_limit: int = PAGE_LIMIT, sleep: Any = None) -> None:
        kw = {"sleep": sleep} if sleep is not None else {}
        self.page_limit = page_limit
        self.http = HttpProviderClient(
            PROVIDER, base_url or DEFAULT_BASE_URL, timeout_s=timeout_s, max_attempts=max_attempts,
            backoff_initial_s=backoff_initial_s, backoff_max_s=backoff_max_s,
            max_retry_after_s=max_retry_after_s, **kw,
        )

    def fetch_daily_bars(self, request: InstrumentRequest, start: date, end: date) -> FetchResult:
        pair = to_binance_symbol(request.symbol, request.asset_class)
        first = len(self.http.exchanges)
        start_ms, end_ms = _ms(start), _ms(end + timedelta(days=1)) - 1
        pages: list[Any] = []
        attempts = 0
        cursor = start_ms
        while cursor <= end_ms:
            params = {"symbol": pair, "interval": "1d", "startTime": cursor, "endTime": end_ms,
                      "limit": self.page_limit}
            doc, n = self.http.get_json(KLINES_PATH, params)
            attempts += n
            if not isinstance(doc, list):
                raise ProviderMalformedError(f"{pair}: klines answer is not a JSON array", provider=PROVIDER)
            pages.append(doc)
            if len(doc) < self.page_limit:
                break
            try:
                last_open = int(doc[-1][0])
            except (IndexError, TypeError, ValueError) as exc:
                raise ProviderMalformedError(f"{pair}: malformed kline {doc[-1]!r}", provider=PROVIDER) from exc
            if last_open < cursor:  # the server went backwards: stop rather than loop
                raise ProviderMalformedError(f"{pair}: klines page does not advance", provider=PROVIDER)
            cursor = last_open + 1
        rows = [r for p in pages for r in p]
        if not rows:
            raise ProviderEmptyError(f"{request.symbol}: Binance returned no klines for {start}..{end}",
                                     provider=PROVIDER)
        frame, non_daily = parse_klines(rows, request.symbol, start, end)
        if frame.empty:
            raise ProviderEmptyError(f"{request.symbol}: no Binance klines inside {start}..{end}", provider=PROVIDER)
        lineage = {
            "provider": PROVIDER, "client": "ais http (requests)", "binance_symbol": pair,
            "usd_mapped_to_usdt": pair.endswith("USDT") and not request.symbol.upper().endswith("USDT"),
            "urls": [e.url for e in self.http.exchanges[first:]], "pages": len(pages), "attempts": attempts,
            "calendar": "24/7", "non_daily_rows": non_daily, "rows": len(frame),
        }
        return FetchResult(symbol=request.symbol, provider=PROVIDER, frame=frame, raw=pages, lineage=lineage)
