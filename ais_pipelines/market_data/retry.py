"""Bounded retry with exponential backoff for transient provider errors (§A5), via tenacity."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from tenacity import (
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from ais_pipelines.market_data.base import ProviderTransientError

T = TypeVar("T")


def _retryable(exc: BaseException) -> bool:
    # a rate limit whose Retry-After is beyond the cap says "give up", not "try again"
    return isinstance(exc, ProviderTransientError) and not getattr(exc, "give_up", False)


def call_with_retry(
    fn: Callable[[], T],
    *,
    max_attempts: int = 4,
    initial_wait_s: float = 0.5,
    max_wait_s: float = 8.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn``; retry only ``ProviderTransientError`` up to ``max_attempts`` times.

    Permanent errors (``ProviderRejectedError``) propagate on the first attempt. After the
    last transient failure the final ``ProviderTransientError`` is re-raised unchanged. An
    error carrying ``retry_after_s`` (a 429's ``Retry-After``) waits exactly that long instead
    of the exponential backoff; the caller caps it (``give_up``) before raising.
    """
    backoff = wait_exponential(multiplier=initial_wait_s, max=max_wait_s)

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        after = getattr(exc, "retry_after_s", None)
        return float(after) if after is not None else backoff(state)

    retrying = Retrying(
        retry=retry_if_exception(_retryable),
        stop=stop_after_attempt(max_attempts),
        wait=wait,
        sleep=sleep,
        reraise=True,
    )
    try:
        return retrying(fn)
    except RetryError as exc:  # pragma: no cover - reraise=True re-raises the last error
        raise exc.last_attempt.exception() from exc  # type: ignore[misc]
