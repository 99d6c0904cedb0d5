"""Bounded retry with exponential backoff for transient provider errors (§A5), via tenacity."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from ais_pipelines.market_data.base import ProviderTransientError

T = TypeVar("T")


def call_with_retry(
    fn: Callable[[], T],
    *,
    max_attempts: int = 4,
    initial_wait_s: float = 0.5,
    max_wait_s: float = 8.0,
) -> T:
    """Call ``fn``; retry only ``ProviderTransientError`` up to ``max_attempts`` times.

    Permanent errors (``ProviderRejectedError``) propagate on the first attempt. After the
    last transient failure the final ``ProviderTransientError`` is re-raised unchanged.
    """
    retrying = Retrying(
        retry=retry_if_exception_type(ProviderTransientError),
        stop=stop_after_attempt(max_attempts),
        wait=wait_exponential(multiplier=initial_wait_s, max=max_wait_s),
        reraise=True,
    )
    try:
        return retrying(fn)
    except RetryError as exc:  # pragma: no cover - reraise=True re-raises the last error
        raise exc.last_attempt.exception() from exc  # type: ignore[misc]
