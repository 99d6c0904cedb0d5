"""Yahoo Finance daily history through yfinance (§A2, §A5).

How yfinance is used, and why not ``yf.Ticker(...).history()``:

* yfinance sends every Yahoo request (cookie from fc.yahoo.com, crumb from
  ``/v1/test/getcrumb``, consent pages, the chart API) through ``yfinance.data.YfData`` and its
  session. We use that machinery for the chart call (``YfData.get``), with a session of our own.
* ``Ticker(session=...)`` would rebind the *process-wide* ``YfData`` singleton to our session,
  which then leaks to every other yfinance user. We build a private ``YfData`` per provider
  instead (``type.__call__`` skips the singleton metaclass), so no global state is touched.
* ``history()`` floors every daily timestamp to a date (the evidence of an intraday row is lost),
  drops NaN rows, merges "live" rows, needs an extra timezone request cached in the user's home
  directory, and does not expose the response body. We parse the chart JSON ourselves instead.

URL override: with ``base_url`` set, the session (a ``curl_cffi`` ``Session`` subclass, the
backend yfinance itself uses) rewrites the scheme and host of every ``*.yahoo.com`` URL to
``base_url`` (path and query kept) and refuses any other host. The override lives in that one
session object, so nothing outside this provider instance is affected.

Yahoo stamps daily bars at the session open in the exchange timezone for equities (09:30
New York) and at midnight for FX and crypto. Rows at either time are daily bars and get the
naive session date; any other timestamp (e.g. Yahoo's live bar, stamped at the last trade)
stays a tz-aware timestamp so that normalization rejects it as intraday.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pandas as pd
from curl_cffi import requests as curl_requests
from yfinance.const import _BASE_URL_
from yfinance.data import YfData

from ais_pipelines.core.asset_classes import AssetClass
from ais_pipelines.market_data.base import (
    OPTIONAL_BAR_COLUMNS,
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

PROVIDER = "yahoo"
CHART_PATH = "/v8/finance/chart/"
_CRYPTO_QUOTES = ("USDT", "USDC", "USD", "EUR", "GBP", "BTC", "ETH")


def to_yahoo_symbol(symbol: str, asset_class: AssetClass) -> str:
    """Our symbol spelling → Yahoo's.

    * FX: ``EUR/USD``, ``EUR-USD``, ``EURUSD`` → ``EURUSD=X`` (``...=X`` is kept).
    * Crypto: ``BTC/USD``, ``BTCUSD``, ``BTC-USD`` → ``BTC-USD`` (also USDT/USDC/EUR/... quotes).
    * Stocks and commodities pass through upper-cased (``AAPL``, ``GLD``, ``GC=F``, ``VOD.L``).
      US share classes must be given in Yahoo's dash form (``BRK-B``): a dot also marks an
      exchange suffix (``.L``, ``.DE``), so it cannot be rewritten safely.
    """
    s = symbol.strip().upper()
    if asset_class is AssetClass.FX:
        if s.endswith("=X"):
            return s
        return s.replace("/", "").replace("-", "") + "=X"
    if asset_class is AssetClass.CRYPTO:
        if "/" in s or "-" in s:
            base, _, quote = s.replace("/", "-").partition("-")
            return f"{base}-{quote}"
        for quote in _CRYPTO_QUOTES:
            if s.endswith(quote) and len(s) > len(quote):
                return f"{s[: -len(quote)]}-{quote}"
        return f"{s}-USD"
    return s


def _is_chart(url: str) -> bool:
    return CHART_PATH in urlsplit(url).path


def _without_crumb(url: str) -> str:
    """The URL for lineage: the crumb is a session credential and is not archived."""
    parts = urlsplit(url)
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "crumb"])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


def _error_detail(body: bytes) -> str:
    """Yahoo's own reason from an error body ({"chart"|"finance": {"error": {...}}}), if any."""
    try:
        doc = json.loads(body)
        for key in ("chart", "finance"):
            err = (doc.get(key) or {}).get("error") or {}
            if err:
                return f"{err.get('code', '')}: {err.get('description', '')}".strip(": ")
    except (ValueError, AttributeError):
        pass
    return body[:200].decode("utf-8", "replace")


class _YahooSession(curl_requests.Session):
    """The curl_cffi session yfinance would use, plus three things it cannot do on its own:

    1. ``base_url``: rewrite every Yahoo URL to it (and refuse any other host), so that the
       cookie, crumb, consent and chart requests all reach a stub or mirror.
    2. Bound every request by our timeout (yfinance uses 30 s for cookie/crumb requests).
    3. Raise our error classes for a failed *chart* request right at the transport. Otherwise
       yfinance re-sends any >= 400 answer once with another cookie strategy (two requests for
       one 401) and turns 429 into its own error: our retry policy (§A5) must be the only one.
    """

    def __init__(self, *, base_url: str | None, timeout_s: float) -> None:
        # trust_env off for an override: an ambient HTTP(S)_PROXY must not catch stub traffic
        super().__init__(impersonate="chrome", trust_env=base_url is None)
        self.base_url = base_url.rstrip("/") if base_url else None
        self.timeout_s = timeout_s

    def _target(self, url: str) -> str:
        if self.base_url is None:
            return url
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if host != "yahoo.com" and not host.endswith(".yahoo.com"):
            raise ProviderRejectedError(f"refusing non-Yahoo URL {url!r} under base_url", provider=PROVIDER)
        base = urlsplit(self.base_url)
        return urlunsplit((base.scheme, base.netloc, base.path + (parts.path or "/"), parts.query, ""))

    def request(self, method: Any, url: str, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        timeout = kwargs.get("timeout")
        kwargs["timeout"] = (
            min(timeout, self.timeout_s) if isinstance(timeout, int | float) else self.timeout_s
        )
        target = self._target(url)
        chart = _is_chart(url)
        try:
            response = super().request(method, target, *args, **kwargs)
        except curl_requests.exceptions.RequestException as exc:
            if chart:  # timeouts, refused/reset connections, DNS: transient (§A5)
                raise ProviderTransientError(f"{method} {target}: {exc}", provider=PROVIDER) from exc
            raise  # cookie/crumb: yfinance itself degrades gracefully on transport errors
        if chart and response.status_code >= 400:
            msg = f"HTTP {response.status_code} from {target}: {_error_detail(response.content)}"
            raise classify_http_status(response.status_code, msg, PROVIDER)
        return response


def _regular_open(meta: dict[str, Any], tz: ZoneInfo) -> time | None:
    """Local time of day at which the exchange's regular session opens (Yahoo's daily stamp)."""
    try:
        start = meta["currentTradingPeriod"]["regular"]["start"]
    except (KeyError, TypeError):
        return None
    return datetime.fromtimestamp(int(start), tz=UTC).astimezone(tz).time().replace(tzinfo=None)


def _session_date(ts: pd.Timestamp, daily_times: set[time]) -> pd.Timestamp:
    """Naive session date for a daily-aligned local timestamp; the aware timestamp otherwise."""
    if ts.time() in daily_times:
        return pd.Timestamp(ts.date())
    return ts


def _column(values: Any, n: int) -> list[Any]:
    return list(values) if isinstance(values, list) and len(values) == n else [None] * n


def parse_chart(
    chart: dict[str, Any], symbol: str, start: date, end: date
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Chart JSON → raw bar frame (``RAW_BAR_COLUMNS`` + ``adj_close``) and parsing notes."""
    body = chart.get("chart") if isinstance(chart, dict) else None
    if not isinstance(body, dict):
        raise ProviderError(f"{symbol}: no 'chart' object in Yahoo's answer", provider=PROVIDER)
    if body.get("error"):
        err = body["error"]
        raise ProviderRejectedError(f"{symbol}: Yahoo error {err}", provider=PROVIDER)
    results = body.get("result") or []
    result = results[0] if results and isinstance(results[0], dict) else {}
    stamps = result.get("timestamp") or []
    if not stamps:
        raise ProviderEmptyError(f"{symbol}: Yahoo returned no bars for {start}..{end}", provider=PROVIDER)

    meta = result.get("meta") or {}
    try:
        tz = ZoneInfo(meta.get("exchangeTimezoneName") or "UTC")
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ProviderError(
            f"{symbol}: unknown exchange timezone {meta.get('exchangeTimezoneName')!r}"
        ) from exc
    daily_times = {time(0, 0)}
    regular_open = _regular_open(meta, tz)
    if regular_open is not None:
        daily_times.add(regular_open)

    n = len(stamps)
    indicators = result.get("indicators") or {}
    quote = (indicators.get("quote") or [{}])[0] or {}
    adj = ((indicators.get("adjclose") or [{}])[0] or {}).get("adjclose")
    frame = pd.DataFrame(
        {
            "ts": [pd.Timestamp(int(s), unit="s", tz="UTC").tz_convert(tz) for s in stamps],
            "open": _column(quote.get("open"), n),
            "high": _column(quote.get("high"), n),
            "low": _column(quote.get("low"), n),
            "close": _column(quote.get("close"), n),
            "volume": _column(quote.get("volume"), n),
            "adj_close": _column(adj, n),
        }
    )
    values = ["open", "high", "low", "close", "volume", "adj_close"]
    frame[values] = frame[values].apply(pd.to_numeric, errors="coerce").astype("float64")
    # rows with no value at all are placeholders (e.g. a session that has not traded yet), not bars
    empty = frame[["open", "high", "low", "close", "volume"]].isna().all(axis=1)
    frame = frame.loc[~empty].sort_values("ts", kind="stable")
    in_range = frame["ts"].map(lambda t: start <= t.date() <= end)
    frame = frame.loc[in_range].reset_index(drop=True)
    if frame.empty:
        raise ProviderEmptyError(f"{symbol}: no Yahoo bars inside {start}..{end}", provider=PROVIDER)

    dates = [_session_date(t, daily_times) for t in frame["ts"]]
    non_daily = sum(1 for d in dates if d.tzinfo is not None)
    # all daily → a proper datetime64 column; mixed → object column keeping the aware stamps
    frame["date"] = (
        pd.Series(dates, dtype=object)
        if non_daily
        else pd.to_datetime(pd.Series(dates)).astype("datetime64[ns]")
    )
    frame["symbol"] = symbol
    notes = {
        "exchange_timezone": str(tz),
        "daily_stamp_times": sorted(t.isoformat() for t in daily_times),
        "non_daily_rows": non_daily,
        "dropped_empty_rows": int(empty.sum()),
    }
    return frame[RAW_BAR_COLUMNS + OPTIONAL_BAR_COLUMNS], notes


class YahooProvider:
    """Daily bars from Yahoo's chart API via yfinance. Raises ``ProviderError`` subclasses only."""

    name = PROVIDER

    def __init__(
        self,
        base_url: str | None = None,
        timeout_s: float = 10,
        max_attempts: int = 4,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 8,
    ) -> None:
        self.base_url = base_url
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._lock = threading.Lock()  # one YfData (cookie, crumb, curl handle) per provider
        self._session: _YahooSession | None = None
        self._data: YfData | None = None

    def _yfdata(self) -> YfData:
        if self._data is None:
            self._session = _YahooSession(base_url=self.base_url, timeout_s=self.timeout_s)
            # type.__call__ bypasses yfinance's SingletonMeta: a private instance, nothing shared
            self._data = type.__call__(YfData, session=self._session)
        return self._data

    def _reset_session(self) -> None:
        # after a 401/403 the cookie/crumb may be stale: start the next fetch from scratch
        session, self._session, self._data = self._session, None, None
        if session is not None:
            session.close()

    def _get_chart(self, url: str, params: dict[str, Any]) -> tuple[dict[str, Any], str]:
        with self._lock:
            try:
                response = self._yfdata().get(url, params=params, timeout=self.timeout_s)
            except ProviderRejectedError:
                self._reset_session()
                raise
            except ProviderError:
                raise
            except curl_requests.exceptions.RequestException as exc:  # a transport error yfinance re-raised
                raise ProviderTransientError(f"GET {url}: {exc}", provider=PROVIDER) from exc
            except Exception as exc:  # yfinance internals (e.g. consent parsing): not retryable
                raise ProviderError(f"GET {url}: yfinance failed: {exc!r}", provider=PROVIDER) from exc
        try:
            doc = json.loads(response.content)
        except ValueError as exc:
            if b"Will be right back" in response.content:  # Yahoo's outage page, served with 200
                raise ProviderTransientError(f"{url}: Yahoo is down", provider=PROVIDER) from exc
            raise ProviderError(f"{url}: answer is not JSON ({exc})", provider=PROVIDER) from exc
        return doc, _without_crumb(str(response.url))

    def fetch_daily_bars(self, request: InstrumentRequest, start: date, end: date) -> FetchResult:
        yahoo_symbol = to_yahoo_symbol(request.symbol, request.asset_class)
        url = f"{_BASE_URL_}{CHART_PATH}{yahoo_symbol}"
        # one day of slack each side (exchanges east of UTC open before 00:00 UTC); rows are
        # filtered by their local session date afterwards
        period1 = datetime.combine(start - timedelta(days=1), time(), UTC)
        period2 = datetime.combine(end + timedelta(days=2), time(), UTC)
        params = {
            "period1": int(period1.timestamp()),
            "period2": int(period2.timestamp()),
            "interval": "1d",
            "includePrePost": "false",
            "events": "div,splits,capitalGains",
        }
        attempts = 0

        def attempt() -> tuple[dict[str, Any], str]:
            nonlocal attempts
            attempts += 1
            return self._get_chart(url, params)

        raw, final_url = call_with_retry(
            attempt,
            max_attempts=self.max_attempts,
            initial_wait_s=self.backoff_initial_s,
            max_wait_s=self.backoff_max_s,
        )
        frame, notes = parse_chart(raw, request.symbol, start, end)
        lineage = {
            "provider": PROVIDER,
            "client": "yfinance",
            "yahoo_symbol": yahoo_symbol,
            "url": final_url,
            "params": params,
            "attempts": attempts,
            "rows": len(frame),
            **notes,
        }
        return FetchResult(symbol=request.symbol, provider=PROVIDER, frame=frame, raw=raw, lineage=lineage)
