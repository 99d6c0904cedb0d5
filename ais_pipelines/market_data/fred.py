"""FRED series observations over REST (§A2, §A5, §C3), through the shared HTTP client.

``GET /fred/series/observations?series_id=VIXCLS&api_key=…&file_type=json&observation_start=…
&observation_end=…&sort_order=asc&limit=…&offset=…`` answers ``{"realtime_start",
"realtime_end", "count", "offset", "limit", "observations": [{"realtime_start",
"realtime_end", "date", "value"}]}``. Values are strings; ``"."`` marks a missing observation
(a holiday): it becomes NaN, never a number. Pages by ``offset`` until ``count`` rows are read.
A bad or missing key is HTTP 400 with ``{"error_code": 400, "error_message": …}`` — not
retried; 429 is retried honouring ``Retry-After``.

Two uses:

* :meth:`FredProvider.fetch_series` — one macro series (VIXCLS, DGS10, …) as ``date, value,
  realtime_start, realtime_end`` for the regime's point-in-time inputs.
* :meth:`FredProvider.fetch_daily_bars` — FX reference rates (H.10 noon buying rates) as bars:
  one fixing a day, so open = high = low = close = the rate and volume 0. ``EUR/USD`` reads
  ``DEXUSEU`` (USD per EUR); a pair only published the other way round is inverted
  (``USD/EUR`` = 1 / ``DEXUSEU``), which lineage records.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import numpy as np
import pandas as pd

from ais_pipelines.core.asset_classes import AssetClass
from ais_pipelines.market_data.base import (
    RAW_BAR_COLUMNS,
    FetchResult,
    InstrumentRequest,
    ProviderEmptyError,
    ProviderMalformedError,
    ProviderRejectedError,
)
from ais_pipelines.market_data.http import HttpProviderClient

PROVIDER = "fred"
DEFAULT_BASE_URL = "https://api.stlouisfed.org"
OBSERVATIONS_PATH = "/fred/series/observations"
PAGE_LIMIT = 100_000  # FRED's maximum
SERIES_COLUMNS = ["series_id", "date", "value", "realtime_start", "realtime_end"]
# H.10 daily rates: pair (base/quote, value = quote units per base unit) → FRED series id
FX_SERIES: dict[str, str] = {
    "EUR/USD": "DEXUSEU", "GBP/USD": "DEXUSUK", "AUD/USD": "DEXUSAL", "NZD/USD": "DEXUSNZ",
    "USD/JPY": "DEXJPUS", "USD/CAD": "DEXCAUS", "USD/CHF": "DEXSZUS", "USD/CNY": "DEXCHUS",
    "USD/MXN": "DEXMXUS", "USD/INR": "DEXINUS", "USD/KRW": "DEXKOUS", "USD/SEK": "DEXSDUS",
    "USD/NOK": "DEXNOUS", "USD/DKK": "DEXDNUS", "USD/SGD": "DEXSIUS", "USD/HKD": "DEXHKUS",
    "USD/BRL": "DEXBZUS", "USD/ZAR": "DEXSFUS",
}


def fx_series_for(symbol: str) -> tuple[str, bool]:
    """(FRED series id, inverted) for an FX pair, or ``ProviderRejectedError``."""
    s = symbol.strip().upper().removesuffix("=X").replace("-", "/")
    if "/" not in s and len(s) == 6:
        s = f"{s[:3]}/{s[3:]}"
    if s in FX_SERIES:
        return FX_SERIES[s], False
    base, _, quote = s.partition("/")
    if f"{quote}/{base}" in FX_SERIES:
        return FX_SERIES[f"{quote}/{base}"], True
    raise ProviderRejectedError(f"{symbol}: no FRED daily reference rate for this pair", provider=PROVIDER)


def parse_observations(docs: list[Any], series_id: str) -> pd.DataFrame:
    """Observation pages → ``SERIES_COLUMNS``; ``"."`` → NaN; anything else unparsable → malformed."""
    rows: list[dict[str, Any]] = []
    for doc in docs:
        for o in doc.get("observations", []):
            if not isinstance(o, dict) or "date" not in o or "value" not in o:
                raise ProviderMalformedError(f"{series_id}: malformed observation {o!r}", provider=PROVIDER)
            raw = str(o["value"]).strip()
            try:
                value = np.nan if raw == "." else float(raw)
            except ValueError as exc:
                raise ProviderMalformedError(f"{series_id}: value {raw!r} on {o['date']} is not a number",
                                             provider=PROVIDER) from exc
            rows.append({"series_id": series_id, "date": o["date"], "value": value,
                         "realtime_start": o.get("realtime_start"), "realtime_end": o.get("realtime_end")})
    frame = pd.DataFrame(rows, columns=SERIES_COLUMNS)
    try:
        frame["date"] = pd.to_datetime(frame["date"], format="%Y-%m-%d")
    except (ValueError, TypeError) as exc:
        raise ProviderMalformedError(f"{series_id}: unparsable observation date ({exc})", provider=PROVIDER) from exc
    frame["value"] = frame["value"].astype("float64")
    return frame


class FredProvider:
    """FRED observations. Raises ``ProviderError`` subclasses only."""

    name = PROVIDER

    def __init__(self, api_key: str, base_url: str | None = None, *, timeout_s: float = 10,
                 max_attempts: int = 4, backoff_initial_s: float = 0.5, backoff_max_s: float = 8,
                 max_retry_after_s: float = 60, page_limit: int = PAGE_LIMIT, sleep: Any = None) -> None:
        if not api_key:
            raise ValueError("FRED needs an API key (FRED_API_KEY)")
        self._api_key = api_key
        self.page_limit = page_limit
        kw = {"sleep": sleep} if sleep is not None else {}
        self.http = HttpProviderClient(
            PROVIDER, base_url or DEFAULT_BASE_URL, timeout_s=timeout_s, max_attempts=max_attempts,
            backoff_initial_s=backoff_initial_s, backoff_max_s=backoff_max_s,
            max_retry_after_s=max_retry_after_s, secret_params=("api_key",), **kw,
        )

    def __repr__(self) -> str:
        return f"FredProvider(base_url={self.http.base_url!r})"

    def _pages(self, series_id: str, start: date, end: date,
               realtime: date | None = None) -> tuple[list[dict[str, Any]], int]:
        pages: list[dict[str, Any]] = []
        attempts, offset = 0, 0
        while True:
            params = {"series_id": series_id, "api_key": self._api_key, "file_type": "json",
                      "observation_start": start.isoformat(), "observation_end": end.isoformat(),
                      "sort_order": "asc", "limit": self.page_limit, "offset": offset}
            if realtime is not None:  # the vintage known on that day (ALFRED): point in time
                params |= {"realtime_start": realtime.isoformat(), "realtime_end": realtime.isoformat()}
            doc, n = self.http.get_json(OBSERVATIONS_PATH, params)
            attempts += n
            if not isinstance(doc, dict) or not isinstance(doc.get("observations"), list):
                raise ProviderMalformedError(f"{series_id}: no 'observations' list in FRED's answer",
                                             provider=PROVIDER)
            pages.append(doc)
            got = len(doc["observations"])
            offset += got
            try:
                count = int(doc.get("count", offset))
            except (TypeError, ValueError) as exc:
                raise ProviderMalformedError(f"{series_id}: bad 'count'", provider=PROVIDER) from exc
            if got == 0 or offset >= count:
                return pages, attempts

    def fetch_series(self, series_id: str, start: date, end: date, *,
                     realtime: date | None = None) -> tuple[pd.DataFrame, list[Any], dict[str, Any]]:
        """(observations frame, raw pages, lineage) of one series over ``start..end``; with
        ``realtime`` the values as they were known on that day (FRED's real-time period)."""
        first = len(self.http.exchanges)
        pages, attempts = self._pages(series_id, start, end, realtime)
        frame = parse_observations(pages, series_id)
        lineage = {"provider": PROVIDER, "client": "ais http (requests)", "series_id": series_id,
                   "urls": [e.url for e in self.http.exchanges[first:]], "pages": len(pages),
                   "attempts": attempts, "rows": len(frame), "missing_values": int(frame["value"].isna().sum()),
                   "realtime_start": pages[0].get("realtime_start") if pages else None}
        return frame, pages, lineage

    def fetch_daily_bars(self, request: InstrumentRequest, start: date, end: date) -> FetchResult:
        if request.asset_class is not AssetClass.FX:
            raise ProviderRejectedError(f"{request.symbol}: FRED serves FX reference rates only",
                                        provider=PROVIDER)
        series_id, inverted = fx_series_for(request.symbol)
        obs, pages, lineage = self.fetch_series(series_id, start, end)
        obs = obs.dropna(subset=["value"])  # "." = no fixing that day (a US holiday): not a bar
        if obs.empty:
            raise ProviderEmptyError(f"{request.symbol}: FRED {series_id} has no values for {start}..{end}",
                                     provider=PROVIDER)
        rate = 1.0 / obs["value"] if inverted else obs["value"]
        frame = pd.DataFrame({"symbol": request.symbol, "date": obs["date"].astype("datetime64[ns]"),
                              "open": rate, "high": rate, "low": rate, "close": rate, "volume": 0.0})
        lineage |= {"inverted": inverted, "bar_kind": "daily fixing (open=high=low=close, volume 0)"}
        return FetchResult(symbol=request.symbol, provider=PROVIDER, frame=frame[RAW_BAR_COLUMNS].reset_index(drop=True),
                           raw=pages, lineage=lineage)
