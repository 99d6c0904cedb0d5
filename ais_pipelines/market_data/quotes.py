"""Fresh quotes for the intraday path (§0 intraday, §H3 "quote older than 30 s", §I5).

:class:`SampleQuoteSource` is the quote feed of the embedded sample market. The nightly job
decides on the close of session D; execution happens in the simulated session after D. The
mid therefore does not stay at the close: it follows a seeded random walk that starts at the
close at the session open and diffuses with the symbol's daily volatility::

    mid(t) = close · exp(σ_daily · √(step / session_length) · W_k(t))

where ``W_k`` is a standard Gaussian random walk on a ``step_s`` grid (linearly interpolated
inside a step), seeded by ``(seed, symbol)``. So:

* the same ``(seed, symbol, instant)`` always gives the same quote (replays are byte-identical,
  §L1) and the path is continuous in time (two calls a second apart are close);
* a fill later in the session is priced away from the decision-time reference close, by about
  σ·√(elapsed / session) — realized slippage never equals the impact model's prediction by
  construction, so the too-perfect-execution veto (§H4) cannot fire on an artefact of the
  simulator.

``bid/ask = mid ∓ spread/2`` with the symbol's estimated spread (bps), and the quote is stamped
with the instant asked for (the injected clock's now) minus an optional ``ts_lag_s`` (tests use
it to produce stale quotes). An unknown symbol answers ``None`` — "no quote", which the pre-trade
policy treats as missing (STALE_QUOTE + MISSING_VALUE) and the paper broker as UNKNOWN_SYMBOL.

Instances are callables ``(symbol, now) -> Quote | None``: exactly the ``quote_source`` the
paper broker takes.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from ais_pipelines.brokers.paper import Quote
from ais_pipelines.core.asset_classes import AssetClass, classify_symbol
from ais_pipelines.core.clock import ensure_utc

SESSION_SECONDS = 6.5 * 3600  # one regular US equity session: the unit of "daily" σ
_CHUNK = 4096  # random-walk steps generated at a time


def _positive(value: object) -> float | None:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


class SampleQuoteSource:
    """Deterministic, fresh quotes for the simulated session (see the module docstring)."""

    provider = "sample"  # counted by the data-dependency veto: the same source as the history

    def __init__(
        self,
        last_closes: Mapping[str, float],
        spreads_bps: Mapping[str, float],
        sigma_daily: Mapping[str, float],
        session_open: datetime,
        seed: int = 0,
        *,
        step_s: float = 5.0,
        session_seconds: float = SESSION_SECONDS,
        ts_lag_s: float = 0.0,
        default_spread_bps: float = 10.0,
        default_sigma: float = 0.02,
    ) -> None:
        if step_s <= 0 or session_seconds <= 0:
            raise ValueError("step_s and session_seconds must be positive")
        self.last_closes = {str(k): v for k, v in last_closes.items() if _positive(v) is not None}
        self.spreads_bps = dict(spreads_bps)
        self.sigma_daily = dict(sigma_daily)
        self.session_open = ensure_utc(session_open)
        self.seed = int(seed)
        self.step_s = float(step_s)
        self.session_seconds = float(session_seconds)
        self.ts_lag_s = float(ts_lag_s)
        self.default_spread_bps = float(default_spread_bps)
        self.default_sigma = float(default_sigma)
        # symbol -> list of per-chunk cumulative walks, each starting where the previous ended
        self._paths: dict[str, list[np.ndarray]] = {}

    # --- the walk ------------------------------------------------------------------------------

    def _walk(self, symbol: str, k: int) -> float:
        """W at grid step ``k`` (W_0 = 0)."""
        if k <= 0:
            return 0.0
        chunks = self._paths.setdefault(symbol, [])
        sym_seed = zlib.crc32(symbol.encode("utf-8"))  # stable across processes, unlike hash()
        while len(chunks) * _CHUNK < k:
            c = len(chunks)
            rng = np.random.default_rng([self.seed, sym_seed, c])
            start = chunks[-1][-1] if chunks else 0.0
            chunks.append(start + np.cumsum(rng.standard_normal(_CHUNK)))
        idx = k - 1
        return float(chunks[idx // _CHUNK][idx % _CHUNK])

    def sigma(self, symbol: str) -> float:
        return _positive(self.sigma_daily.get(symbol)) or self.default_sigma

    def spread_bps(self, symbol: str) -> float:
        v = self.spreads_bps.get(symbol)
        try:
            f = float(v)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return self.default_spread_bps
        return f if math.isfinite(f) and f >= 0 else self.default_spread_bps

    def mid(self, symbol: str, now: datetime) -> float:
        """The mid at ``now``; ``KeyError`` for a symbol without a last close."""
        close = float(self.last_closes[symbol])
        elapsed = (ensure_utc(now) - self.session_open).total_seconds()
        if elapsed <= 0:
            return close  # before the open the last close is the only price there is
        pos = elapsed / self.step_s
        k = int(pos)
        frac = pos - k
        w = self._walk(symbol, k)
        if frac > 0:
            w += frac * (self._walk(symbol, k + 1) - w)
        scale = self.sigma(symbol) * math.sqrt(self.step_s / self.session_seconds)
        return close * math.exp(scale * w)

    def __call__(self, symbol: str, now: datetime) -> Quote | None:
        if symbol not in self.last_closes:
            return None
        mid = self.mid(symbol, now)
        half = mid * self.spread_bps(symbol) / 2.0 / 1e4
        return Quote(mid - half, mid + half, ensure_utc(now) - timedelta(seconds=self.ts_lag_s))


class AlpacaQuoteSource:
    """Latest NBBO-style quotes from Alpaca's market-data API via alpaca-py (prod, §A3 live quotes).

    Stocks/ETFs through ``/v2/stocks/quotes/latest`` (``feed``, default iex), crypto through
    ``/v1beta3/crypto/us/latest/quotes``; FX is not served (``None``: no quote, fail closed).
    The quote carries Alpaca's own timestamp, so a stale feed shows up as STALE_QUOTE. Any
    transport or API error propagates: the caller records a missing quote, never a guessed one.
    ``url_override`` points the client at another host (tests: a local stub).
    """

    provider = "alpaca"

    def __init__(
        self,
        api_key: str,
        secret_key: str,
        *,
        url_override: str | None = None,
        feed: str = "iex",
        asset_class_for: Callable[[str], AssetClass] | None = None,
    ) -> None:
        if not api_key or not secret_key:
            raise ValueError("Alpaca needs both an API key and a secret key")
        self._api_key = api_key
        self._secret_key = secret_key
        self.url_override = url_override.rstrip("/") if url_override else None
        self.feed = feed
        self.asset_class_for = asset_class_for or classify_symbol

    def __repr__(self) -> str:  # never print the keys
        return f"AlpacaQuoteSource(url_override={self.url_override!r}, feed={self.feed!r})"

    def __call__(self, symbol: str, now: datetime) -> Quote | None:
        from alpaca.data.enums import DataFeed
        from alpaca.data.historical.crypto import CryptoHistoricalDataClient
        from alpaca.data.historical.stock import StockHistoricalDataClient
        from alpaca.data.requests import CryptoLatestQuoteRequest, StockLatestQuoteRequest

        from ais_pipelines.market_data.alpaca import to_alpaca_symbol

        cls = self.asset_class_for(symbol)
        if cls is AssetClass.FX:
            return None
        alpaca_symbol = to_alpaca_symbol(symbol, cls)
        common: dict[str, Any] = {"api_key": self._api_key, "secret_key": self._secret_key,
                                  "url_override": self.url_override}
        if cls is AssetClass.CRYPTO:
            found = CryptoHistoricalDataClient(**common).get_crypto_latest_quote(
                CryptoLatestQuoteRequest(symbol_or_symbols=alpaca_symbol)
            )
        else:
            found = StockHistoricalDataClient(**common).get_stock_latest_quote(
                StockLatestQuoteRequest(symbol_or_symbols=alpaca_symbol, feed=DataFeed(self.feed))
            )
        q = found.get(alpaca_symbol) if isinstance(found, Mapping) else None
        if q is None:
            return None
        return Quote(float(q.bid_price), float(q.ask_price), ensure_utc(q.timestamp))
