"""The provider protocol, its result type and its error classes (§A5)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Protocol, overload

import numpy as np
import pandas as pd

from ais_pipelines.core.asset_classes import AssetClass
from ais_pipelines.core.reason_codes import ReasonCode

RAW_BAR_COLUMNS = ["symbol", "date", "open", "high", "low", "close", "volume"]
OPTIONAL_BAR_COLUMNS = ["adj_close"]


class ProviderError(Exception):
    """Base class: a provider could not deliver. Carries a reason code and the HTTP status."""

    reason_code: ReasonCode = ReasonCode.PROVIDER_NOT_AVAILABLE

    def __init__(self, message: str, *, status: int | None = None, provider: str | None = None):
        super().__init__(message)
        self.status = status
        self.provider = provider


class ProviderRejectedError(ProviderError):
    """400/401/403 and other permanent refusals: never retried (§A5)."""

    reason_code = ReasonCode.PROVIDER_REJECTED


class ProviderTransientError(ProviderError):
    """Timeouts, connection errors, 429 and 5xx: retried with bounded backoff (§A5)."""

    reason_code = ReasonCode.PROVIDER_TRANSIENT_EXHAUSTED


class ProviderEmptyError(ProviderError):
    """The provider answered but delivered no bars for the symbol."""

    reason_code = ReasonCode.PROVIDER_EMPTY_RESPONSE


# --- issue 16: shared HTTP client errors (polygon, binance, fred) ----------------------------
class ProviderRateLimitedError(ProviderTransientError):
    """429 (or 503) with ``Retry-After``: retried after exactly that wait (§A5), unless the wait
    is longer than the declared cap, in which case ``give_up`` is set and it is not retried."""

    reason_code = ReasonCode.PROVIDER_RATE_LIMITED

    def __init__(self, message: str, *, status: int | None = None, provider: str | None = None,
                 retry_after_s: float | None = None, give_up: bool = False):
        super().__init__(message, status=status, provider=provider)
        self.retry_after_s = retry_after_s
        self.give_up = give_up


class ProviderMalformedError(ProviderError):
    """A 2xx answer that is not the documented payload (not JSON, wrong shape): not retried."""

    reason_code = ReasonCode.PROVIDER_MALFORMED_RESPONSE


def classify_http_status(status: int, message: str, provider: str) -> ProviderError:
    """Map an HTTP status to the right error class (§A5)."""
    if status in (408, 425, 429) or status >= 500:
        return ProviderTransientError(message, status=status, provider=provider)
    return ProviderRejectedError(message, status=status, provider=provider)


@dataclass(frozen=True)
class InstrumentRequest:
    symbol: str
    asset_class: AssetClass


@dataclass
class FetchResult:
    """What one provider returned for one symbol.

    ``frame`` has the columns ``RAW_BAR_COLUMNS`` (+ optional ``adj_close``) exactly as
    delivered (not yet validated: ingestion normalizes and validates it). ``raw`` is the
    JSON-serialisable response as received, archived under ``runtime/raw/{run_id}/``.
    """

    symbol: str
    provider: str
    frame: pd.DataFrame
    raw: Any
    lineage: dict[str, Any] = field(default_factory=dict)


class RawRecords(Sequence[dict[str, Any]]):
    """A response that is a list of flat JSON records (``[{"symbol": .., "date": .., ..}, ..]``),
    held as columns. One Python dict per bar was most of ingestion's time and memory at scale
    (2.5 M bars at 2,000 symbols); :meth:`to_json` writes exactly the bytes ``orjson.dumps`` of
    :meth:`to_records` would, without building them.

    ``columns``: name → a numpy array (all the same length: float, int, bool, str, or
    datetime64 — written as its ISO calendar date, for session-labelled bars) or a scalar
    ``str``/``int``/``float`` shared by every record. Key order is the mapping's order. Arrays
    are held, not copied (views of the provider's frame).
    """

    __slots__ = ("_columns", "_n")

    def __init__(self, columns: Mapping[str, Any]) -> None:
        lengths = {len(v) for v in columns.values() if isinstance(v, np.ndarray)}
        if len(lengths) != 1:
            raise ValueError("RawRecords needs at least one array column, all of one length")
        self._columns = dict(columns)
        self._n = lengths.pop()

    @staticmethod
    def _values(v: np.ndarray) -> np.ndarray:
        return np.datetime_as_string(v, unit="D") if v.dtype.kind == "M" else v

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, i: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, i: slice) -> list[dict[str, Any]]: ...
    def __getitem__(self, i: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(self._n))]
        if not -self._n <= i < self._n:
            raise IndexError(i)
        i %= self._n
        return {k: (self._values(v[i : i + 1])[0].item() if isinstance(v, np.ndarray) else v)
                for k, v in self._columns.items()}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.to_records())

    def take(self, rows: slice | np.ndarray) -> RawRecords:
        """The records at ``rows`` (a slice or integer positions), still columnar: the same
        records as ``[self[i] for i in rows]`` without a dict per record (issue 12: the replay
        slices one generated history to each night's window)."""
        return RawRecords({k: (v[rows] if isinstance(v, np.ndarray) else v) for k, v in self._columns.items()})

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RawRecords):
            other = other.to_records()
        return isinstance(other, list) and self.to_records() == other

    __hash__ = None  # type: ignore[assignment]

    def to_records(self) -> list[dict[str, Any]]:
        """The records as plain dicts (tests and small consumers; the archive uses ``to_json``)."""
        cols = {k: (self._values(v).tolist() if isinstance(v, np.ndarray) else [v] * self._n)
                for k, v in self._columns.items()}
        return [dict(zip(cols, row, strict=True)) for row in zip(*cols.values(), strict=True)]

    def to_json(self) -> bytes:
        """``orjson.dumps(self.to_records())``, built from one orjson call per column."""
        import orjson

        if self._n == 0:
            return b"[]"
        template: list[bytes] = []
        tokens: list[list[bytes]] = []
        for k, v in self._columns.items():
            template.append(orjson.dumps(k).replace(b"%", b"%%") + b":")
            if not isinstance(v, np.ndarray):
                template.append(orjson.dumps(v).replace(b"%", b"%%"))
            elif v.dtype.kind in "fiub":
                # numpy numbers serialise exactly as the equal Python floats/ints; no commas inside
                tokens.append(orjson.dumps(v, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1].split(b","))
                template.append(b"%b")
            elif v.dtype.kind == "M":  # ISO dates hold no comma: one call, split
                tokens.append(orjson.dumps(self._values(v).tolist())[1:-1].split(b","))
                template.append(b"%b")
            else:  # strings: encode each distinct value once
                uniq, inv = np.unique(self._values(v).astype(str), return_inverse=True)
                enc = np.array([orjson.dumps(u) for u in uniq.tolist()], dtype=object)
                tokens.append(enc[inv].tolist())
                template.append(b"%b")
            template.append(b",")
        row = b"{" + b"".join(template[:-1]) + b"}"
        if not tokens:
            return b"[" + b",".join([row.replace(b"%%", b"%")] * self._n) + b"]"
        return b"[" + b",".join(map(row.__mod__, zip(*tokens, strict=True))) + b"]"


class HistoryProvider(Protocol):
    """A source of daily bars. Implementations raise ``ProviderError`` subclasses only."""

    name: str

    def fetch_daily_bars(self, request: InstrumentRequest, start: date, end: date) -> FetchResult: ...


def dated_raw_bars(frame: pd.DataFrame, dates: list, symbol: str) -> tuple[pd.DataFrame, int]:
    """The raw bar frame with its ``date`` column: session dates when every row is daily, else the
    tz-aware stamps kept as they are (normalization rejects them as intraday); and that count."""
    non_daily = sum(1 for d in dates if d.tzinfo is not None)
    frame["date"] = (pd.Series(dates, dtype=object) if non_daily
                     else pd.to_datetime(pd.Series(dates, dtype=object)).astype("datetime64[ns]"))
    frame["symbol"] = symbol
    return frame[RAW_BAR_COLUMNS], non_daily
