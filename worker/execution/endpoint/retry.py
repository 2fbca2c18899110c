"""Retries: which failures get another attempt, how long to wait, and Retry-After."""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

from worker.execution.endpoint.errors import CallError
from worker.execution.spec import RetryPolicy

T = TypeVar("T")


def backoff_delay(policy: RetryPolicy, failed_attempts: int) -> float:
    """Full jitter: uniform in [0, min(max_delay, base_delay * 2**(n-1))], so a burst of failing calls
    spreads out instead of retrying in step."""
    ceiling = min(policy.max_delay, policy.base_delay * 2 ** max(failed_attempts - 1, 0))
    return random.uniform(0.0, ceiling)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP-date); None when absent or garbled."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    return max(0.0, (when - current).total_seconds())


async def with_retries(policy: RetryPolicy, attempt: Callable[[int], Awaitable[T]]) -> T:
    """Runs ``attempt(n)`` for n = 1.. until it returns, raises a CallError that is not retryable, or the
    policy's attempts are spent; the last CallError propagates. A 429 waits for its Retry-After (if longer
    than retry_after_cap the call stops at once, rate_limited), else for the backoff."""
    number = 1
    while True:
        try:
            return await attempt(number)
        except CallError as error:
            if not error.retryable or number >= policy.max_attempts:
                raise
            delay = backoff_delay(policy, number)
            if error.error_type == "rate_limited" and error.retry_after is not None:
                if error.retry_after > policy.retry_after_cap:
                    raise CallError("rate_limited", f"{error.message}; Retry-After {error.retry_after:.0f}s is "
                                    f"over the {policy.retry_after_cap:.0f}s cap",
                                    http_status=error.http_status) from None
                delay = error.retry_after
        await asyncio.sleep(delay)
        number += 1
