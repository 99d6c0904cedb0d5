"""One small JSON-over-HTTP client for the REST providers without a well-kept official
client that leaves retries to us (polygon, binance, fred), applying §A5 in one place.

Why not the vendors' libraries: ``polygon-api-client`` retries 429/5xx itself through urllib3
(three times, its own backoff, ``Retry-After`` ignored) and returns parsed model objects, not
the pages as received; ``python-binance`` and ``fredapi`` are third-party wrappers that do the
same or return only a pandas series. Each would multiply our retry policy and hide the raw
answer that §B2 archives. The wire formats are small and documented, so one client suffices.

Rules (§A5), per request:

* 2xx with a JSON body → the decoded document; a body that is not JSON →
  ``ProviderMalformedError`` (not retried: the same request gives the same answer).
* 429 (and 503 with ``Retry-After``) → ``ProviderRateLimitedError``: retried after exactly
  ``Retry-After`` seconds (delta-seconds or an HTTP date); a wait longer than
  ``max_retry_after_s`` is not waited for (``give_up``, reason ``PROVIDER_RATE_LIMITED``).
* Timeouts, connection errors, 408/425 and 5xx → ``ProviderTransientError``: retried with
  bounded exponential backoff, ``max_attempts`` in all.
* 400/401/403/404/418/451 and other 4xx → ``ProviderRejectedError`` at once, never retried.

Secrets travel as query parameters for these APIs (``apiKey``, ``api_key``): every URL that
leaves this module (lineage, error messages) has them replaced by ``***``.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import requests

from ais_pipelines.market_data.base import (
    ProviderError,
    ProviderMalformedError,
    ProviderRateLimitedError,
    ProviderTransientError,
    classify_http_status,
)
from ais_pipelines.market_data.retry import call_with_retry

_TRANSPORT_TRANSIENT = (
    requests.exceptions.Timeout,
    requests.exceptions.ConnectionError,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


def redact_url(url: str, secret_params: Iterable[str]) -> str:
    """``url`` with the values of ``secret_params`` replaced by ``***``."""
    secrets = {p.lower() for p in secret_params}
    parts = urlsplit(url)
    query = [(k, "***" if k.lower() in secrets else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query, safe="*:,"), ""))


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds (RFC 9110: delta-seconds or an HTTP date); None if absent/bad."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


@dataclass
class Exchange:
    """One HTTP exchange as recorded for lineage (URL redacted)."""

    url: str
    status: int | None
    elapsed_s: float


@dataclass
class HttpProviderClient:
    """GET JSON from one provider with the §A5 rules. One instance per provider object."""

    provider: str
    base_url: str
    timeout_s: float = 10.0
    max_attempts: int = 4
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 8.0
    max_retry_after_s: float = 60.0
    secret_params: tuple[str, ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    sleep: Callable[[float], None] = time.sleep
    exchanges: list[Exchange] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")
        self._session = requests.Session()
        # an explicit base URL (stub, mirror) must not be caught by an ambient HTTP(S)_PROXY
        self._session.trust_env = False
        self._session.headers.update({"Accept": "application/json", "User-Agent": "ais-pipelines", **self.headers})

    def close(self) -> None:
        self._session.close()

    def url(self, path_or_url: str) -> str:
        """A path under ``base_url``; an absolute URL (a ``next_url``) is re-rooted on it."""
        if path_or_url.startswith(("http://", "https://")):
            parts = urlsplit(path_or_url)
            base = urlsplit(self.base_url)
            return urlunsplit((base.scheme, base.netloc, base.path + parts.path, parts.query, ""))
        return f"{self.base_url}/{path_or_url.lstrip('/')}"

    def get_json(self, path_or_url: str, params: Mapping[str, Any] | None = None) -> tuple[Any, int]:
        """The decoded JSON answer and the number of attempts it took (retries included)."""
        attempts = 0

        def attempt() -> Any:
            nonlocal attempts
            attempts += 1
            return self._once(self.url(path_or_url), dict(params or {}))

        doc = call_with_retry(
            attempt, max_attempts=self.max_attempts, initial_wait_s=self.backoff_initial_s,
            max_wait_s=self.backoff_max_s, sleep=self.sleep,
        )
        return doc, attempts

    def _once(self, url: str, params: dict[str, Any]) -> Any:
        t0 = time.perf_counter()
        shown = redact_url(requests.Request("GET", url, params=params).prepare().url or url, self.secret_params)
        try:
            response = self._session.get(url, params=params, timeout=self.timeout_s)
        except _TRANSPORT_TRANSIENT as exc:
            self.exchanges.append(Exchange(shown, None, time.perf_counter() - t0))
            raise ProviderTransientError(f"GET {shown}: {type(exc).__name__}", provider=self.provider) from exc
        except requests.exceptions.RequestException as exc:  # invalid URL and the like: permanent
            raise ProviderError(f"GET {shown}: {type(exc).__name__}: {exc}", provider=self.provider) from exc
        status = response.status_code
        self.exchanges.append(Exchange(shown, status, time.perf_counter() - t0))
        if status >= 400:
            detail = _error_detail(response)
            msg = f"HTTP {status} from {self.provider} {shown}: {detail}"
            after = parse_retry_after(response.headers.get("Retry-After"))
            if status == 429 or (status == 503 and after is not None):
                give_up = after is not None and after > self.max_retry_after_s
                if give_up:
                    msg += f" (Retry-After {after:.0f}s > cap {self.max_retry_after_s:.0f}s: not waited for)"
                raise ProviderRateLimitedError(
                    msg, status=status, provider=self.provider, retry_after_s=after, give_up=give_up
                )
            raise classify_http_status(status, msg, self.provider)
        try:
            return json.loads(response.content)
        except ValueError as exc:
            raise ProviderMalformedError(
                f"{self.provider} {shown}: answer is not JSON ({response.content[:80]!r})", provider=self.provider
            ) from exc


def _error_detail(response: requests.Response) -> str:
    """The provider's own reason from a JSON error body (any of the usual keys), else text."""
    try:
        doc = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(doc, dict):
        for key in ("error_message", "error", "message", "msg"):
            if doc.get(key):
                code = doc.get("code") or doc.get("error_code") or doc.get("status")
                return f"{code}: {doc[key]}" if code else str(doc[key])
    return str(doc)[:200]
