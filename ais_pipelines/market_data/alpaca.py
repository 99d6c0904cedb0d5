"""Alpaca market-data history through alpaca-py (§A2, §A5).

Stocks and commodity ETFs use ``StockHistoricalDataClient`` (``/v2/stocks/bars``, adjustment
``all``, feed ``iex`` by default); crypto uses ``CryptoHistoricalDataClient``
(``/v1beta3/crypto/us/bars``). alpaca-py follows ``next_page_token`` itself. FX and commodity
futures are not served by Alpaca and are rejected before any request.

URL override: alpaca-py's own ``url_override`` argument (the client then calls
``{url_override}/v2/...`` or ``{url_override}/v1beta3/...``). It is per client object, so it
cannot leak; a fresh client is built for every fetch.

Two alpaca-py defaults are replaced on each client, because they would undercut §A5:

* Retries: ``RESTClient`` retries 429 and 504 three times with a 3 s sleep. The data clients do
  not forward ``retry_attempts``/``retry_exception_codes`` (and ``RESTClient`` ignores 0 or
  ``[]`` anyway), so we set ``client._retry = 0``; ``_one_request`` then raises ``APIError``
  on the first 429/504 and ``call_with_retry`` is the only retry policy that applies.
* Timeouts: alpaca-py sends requests without a timeout (a stalled server hangs forever). Its
  ``requests.Session`` (``client._session``) is replaced by one that sets our timeout and keeps
  each response body, so ``raw`` holds the pages exactly as received (``raw_data=True``
  returns pages already merged by symbol).

Both touch private attributes; ``_configure`` checks they exist and fails loudly if alpaca-py
changes them.

Alpaca stamps daily stock bars at midnight New York (``2024-01-03T05:00:00Z``) and daily crypto
bars at midnight UTC (midnight Chicago before mid-2025). Such rows get the naive session date;
any other timestamp stays tz-aware so that normalization rejects it as intraday.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import requests
from alpaca.common.exceptions import APIError
from alpaca.data.enums import Adjustment, DataFeed
from alpaca.data.historical.crypto import CryptoHistoricalDataClient
from alpaca.data.historical.stock import StockHistoricalDataClient
from alpaca.data.requests import CryptoBarsRequest, StockBarsRequest
from alpaca.data.timeframe import TimeFrame

from ais_pipelines.core.asset_classes import AssetClass
from ais_pipelines.market_data.base import (
    RAW_BAR_COLUMNS,
    FetchResult,
    InstrumentRequest,
    ProviderEmptyError,
    ProviderError,
    ProviderRejectedError,
    ProviderTransientError,
    classify_http_status,
)
from ais_pipelines.market_data.retry import call_with_retry

PROVIDER = "alpaca"
# Local zones whose midnight marks a daily bar, per asset class, in order of preference.
DAILY_STAMP_ZONES: dict[AssetClass, tuple[str, ...]] = {
    AssetClass.STOCKS: ("America/New_York",),
    AssetClass.COMMODITIES: ("America/New_York",),
    AssetClass.CRYPTO: ("UTC", "America/Chicago"),
}
_CRYPTO_QUOTES = ("USDT", "USDC", "USD", "BTC", "ETH")
_TRANSIENT_TRANSPORT = (
    requests.exceptions.Timeout,
    requests.exceptions.ConnectionError,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


def to_alpaca_symbol(symbol: str, asset_class: AssetClass) -> str:
    """Our symbol spelling → Alpaca's, or ``ProviderRejectedError`` for what Alpaca does not serve.

    * Crypto: ``BTC-USD``, ``BTCUSD``, ``BTC/USD`` → ``BTC/USD`` (v1beta3 wants the slash).
    * Stocks and commodity ETFs: upper-cased, Yahoo's share-class dash → dot (``BRK-B`` → ``BRK.B``).
    * FX and commodity futures (``GC=F``): not served by Alpaca.
    """
    s = symbol.strip().upper()
    if asset_class is AssetClass.FX:
        raise ProviderRejectedError(f"{symbol}: Alpaca does not serve FX history", provider=PROVIDER)
    if asset_class is AssetClass.CRYPTO:
        if "/" in s or "-" in s:
            base, _, quote = s.replace("-", "/").partition("/")
            return f"{base}/{quote}"
        for quote in _CRYPTO_QUOTES:
            if s.endswith(quote) and len(s) > len(quote):
                return f"{s[: -len(quote)]}/{quote}"
        return f"{s}/USD"
    if "=" in s or "^" in s:
        raise ProviderRejectedError(f"{symbol}: Alpaca serves US stocks and ETFs only", provider=PROVIDER)
    return s.replace("-", ".")


class _RecordingSession(requests.Session):
    """alpaca-py's session with a default timeout and a record of every response."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__()
        self.timeout_s = timeout_s
        self.exchanges: list[tuple[str, int, bytes]] = []  # (url, status, body)

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout_s
        response = super().request(method, url, *args, **kwargs)
        self.exchanges.append((response.url, response.status_code, response.content))
        return response


def _configure(client: Any, session: _RecordingSession) -> None:
    for attr in ("_session", "_retry", "_retry_codes"):
        if not hasattr(client, attr):  # alpaca-py internals moved: refuse rather than hang/retry
            raise RuntimeError(f"alpaca-py {type(client).__name__} has no {attr}; update alpaca.py")
    client._retry = 0  # no RetryException on 429/504: our call_with_retry decides
    client._retry_codes = []
    client._session = session


def _session_date(ts: pd.Timestamp, zones: tuple[str, ...]) -> pd.Timestamp:
    """Naive session date when ``ts`` is midnight in one of ``zones``; ``ts`` (aware) otherwise."""
    for zone in zones:
        local = ts.tz_convert(ZoneInfo(zone))
        if local.time() == time(0, 0):
            return pd.Timestamp(local.date())
    return ts


def parse_bars(
    bars: list[dict[str, Any]], symbol: str, asset_class: AssetClass, start: date, end: date
) -> tuple[pd.DataFrame, int]:
    """Alpaca bar dicts (``t, o, h, l, c, v, ...``) → raw bar frame and the count of non-daily rows."""
    zones = DAILY_STAMP_ZONES[asset_class]
    try:
        stamps = [pd.Timestamp(b["t"]).tz_convert("UTC") for b in bars]
    except (KeyError, TypeError, ValueError) as exc:
        raise ProviderError(f"{symbol}: malformed Alpaca bar timestamp ({exc})", provider=PROVIDER) from exc
    frame = pd.DataFrame(
        {
            "ts": stamps,
            "open": [b.get("o") for b in bars],
            "high": [b.get("h") for b in bars],
            "low": [b.get("l") for b in bars],
            "close": [b.get("c") for b in bars],
            "volume": [b.get("v") for b in bars],
        }
    )
    values = ["open", "high", "low", "close", "volume"]
    frame[values] = frame[values].apply(pd.to_numeric, errors="coerce").astype("float64")
    frame["date"] = [_session_date(t, zones) for t in frame["ts"]]
    # keep rows whose session (or, for intraday rows, local) date is inside the request
    local_day = [
        d.date() if d.tzinfo is None else d.tz_convert(ZoneInfo(zones[0])).date() for d in frame["date"]
    ]
    frame = frame.loc[[start <= d <= end for d in local_day]].sort_values("ts", kind="stable")
    frame = frame.reset_index(drop=True)
    non_daily = sum(1 for d in frame["date"] if d.tzinfo is not None)
    if non_daily:
        frame["date"] = pd.Series(list(frame["date"]), dtype=object)
    else:
        frame["date"] = pd.to_datetime(pd.Series(list(frame["date"]), dtype=object)).astype("datetime64[ns]")
    frame["symbol"] = symbol
    return frame[RAW_BAR_COLUMNS], non_daily


class AlpacaHistoryProvider:
    """Daily bars from Alpaca's market-data API. Raises ``ProviderError`` subclasses only."""

    name = PROVIDER

    def __init__(
        self,
        api_key: str,
        secret_key: str,
        url_override: str | None = None,
        feed: str = "iex",
        timeout_s: float = 10,
        max_attempts: int = 4,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 8,
    ) -> None:
        if not api_key or not secret_key:
            raise ValueError("Alpaca needs both an API key and a secret key")
        self._api_key = api_key
        self._secret_key = secret_key
        self.url_override = url_override.rstrip("/") if url_override else None
        self.feed = DataFeed(feed)
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s

    def __repr__(self) -> str:  # never print the keys
        return f"AlpacaHistoryProvider(url_override={self.url_override!r}, feed={self.feed.value!r})"

    def _get_bars(
        self, alpaca_symbol: str, asset_class: AssetClass, start: date, end: date, session: _RecordingSession
    ) -> dict[str, Any]:
        """One paginated bars call with a fresh client (nothing shared between fetches)."""
        begin = datetime.combine(start, time(), UTC)
        # alpaca's end is inclusive; one extra day covers every stamping convention, rows filtered later
        finish = datetime.combine(end + timedelta(days=1), time(), UTC)
        common = {
            "api_key": self._api_key,
            "secret_key": self._secret_key,
            "raw_data": True,
            "url_override": self.url_override,
        }
        if asset_class is AssetClass.CRYPTO:
            crypto = CryptoHistoricalDataClient(**common)
            _configure(crypto, session)
            req = CryptoBarsRequest(
                symbol_or_symbols=alpaca_symbol, timeframe=TimeFrame.Day, start=begin, end=finish
            )
            return crypto.get_crypto_bars(req)  # type: ignore[return-value]
        stock = StockHistoricalDataClient(**common)
        _configure(stock, session)
        sreq = StockBarsRequest(
            symbol_or_symbols=alpaca_symbol,
            timeframe=TimeFrame.Day,
            start=begin,
            end=finish,
            adjustment=Adjustment.ALL,
            feed=self.feed,
        )
        return stock.get_stock_bars(sreq)  # type: ignore[return-value]

    def _attempt(
        self, alpaca_symbol: str, asset_class: AssetClass, start: date, end: date
    ) -> tuple[dict[str, Any], _RecordingSession]:
        session = _RecordingSession(self.timeout_s)
        try:
            merged = self._get_bars(alpaca_symbol, asset_class, start, end, session)
        except APIError as exc:
            status = exc.status_code
            if status is None:
                raise ProviderError(
                    f"{alpaca_symbol}: Alpaca error without status: {exc}", provider=PROVIDER
                ) from exc
            raise classify_http_status(status, f"HTTP {status} from Alpaca: {exc}", PROVIDER) from exc
        except _TRANSIENT_TRANSPORT as exc:
            raise ProviderTransientError(
                f"{alpaca_symbol}: {type(exc).__name__}: {exc}", provider=PROVIDER
            ) from exc
        except requests.exceptions.RequestException as exc:  # bad URL, undecodable JSON, ...
            raise ProviderError(f"{alpaca_symbol}: {type(exc).__name__}: {exc}", provider=PROVIDER) from exc
        except (ValueError, KeyError, TypeError) as exc:  # alpaca-py could not read the payload
            raise ProviderError(
                f"{alpaca_symbol}: unreadable Alpaca answer: {exc}", provider=PROVIDER
            ) from exc
        finally:
            session.close()
        return merged, session

    def fetch_daily_bars(self, request: InstrumentRequest, start: date, end: date) -> FetchResult:
        if request.asset_class not in DAILY_STAMP_ZONES:
            raise ProviderRejectedError(
                f"{request.symbol}: Alpaca does not serve {request.asset_class} history", provider=PROVIDER
            )
        alpaca_symbol = to_alpaca_symbol(request.symbol, request.asset_class)
        attempts = 0

        def attempt() -> tuple[dict[str, Any], _RecordingSession]:
            nonlocal attempts
            attempts += 1
            return self._attempt(alpaca_symbol, request.asset_class, start, end)

        merged, session = call_with_retry(
            attempt,
            max_attempts=self.max_attempts,
            initial_wait_s=self.backoff_initial_s,
            max_wait_s=self.backoff_max_s,
        )
        pages = [json.loads(body) for _, status, body in session.exchanges if 200 <= status < 300 and body]
        bars = merged.get(alpaca_symbol) or []
        if not bars:
            raise ProviderEmptyError(
                f"{request.symbol}: Alpaca returned no bars for {start}..{end}", provider=PROVIDER
            )
        frame, non_daily = parse_bars(bars, request.symbol, request.asset_class, start, end)
        if frame.empty:
            raise ProviderEmptyError(
                f"{request.symbol}: no Alpaca bars inside {start}..{end}", provider=PROVIDER
            )
        lineage = {
            "provider": PROVIDER,
            "client": "alpaca-py",
            "alpaca_symbol": alpaca_symbol,
            "urls": [url for url, _, _ in session.exchanges],
            "pages": len(pages),
            "attempts": attempts,
            "feed": self.feed.value if request.asset_class is not AssetClass.CRYPTO else "us",
            "adjustment": Adjustment.ALL.value if request.asset_class is not AssetClass.CRYPTO else None,
            "daily_stamp_zones": list(DAILY_STAMP_ZONES[request.asset_class]),
            "non_daily_rows": non_daily,
            "rows": len(frame),
        }
        return FetchResult(symbol=request.symbol, provider=PROVIDER, frame=frame, raw=pages, lineage=lineage)
