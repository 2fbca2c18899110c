"""One POST to a judge provider with our retry rules, over a shared aiohttp session.

Retried, up to ``RetryPolicy.max_attempts`` calls in all: 429 (waiting its Retry-After when that is at most
``retry_after_cap``, else giving up at once), 5xx, timeouts and connection errors, with exponential backoff
and jitter between attempts. Any other status ends the call with an error naming the status. Redirects are not
followed: the key header must not travel to another host.

Keys travel only in request headers. Error messages and log lines hold the provider label, status, attempt
count and exception class; text from the provider's error body is redacted of the keys before it is used.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp

from worker.execution.metrics.outcome import clip, number, redact
from worker.execution.spec import RetryPolicy

log = logging.getLogger("worker.execution.metrics")

#: A judge's reply is a short JSON verdict; anything far larger is not a reply worth reading.
MAX_BODY = 4 * 1024 * 1024


class JudgeCallError(Exception):
    """The provider gave no usable reply; the message is one line for people and never holds a key."""


def backoff_delay(retry: RetryPolicy, attempt: int) -> float:
    """Exponential, capped, with half of it random so many workers do not retry in step."""
    delay = min(retry.max_delay, retry.base_delay * 2 ** (attempt - 1))
    return delay / 2 + random.uniform(0, delay / 2)


def retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


async def post_json(
    session: aiohttp.ClientSession, url: str, *, headers: Mapping[str, str], body: Any, timeout: float,
    retry: RetryPolicy, label: str, secrets: Sequence[str | None],
) -> Any:
    attempts = max(1, retry.max_attempts)
    for attempt in range(1, attempts + 1):
        wait: float | None = None
        try:
            async with session.post(url, json=body, headers=dict(headers), allow_redirects=False,
                                    timeout=aiohttp.ClientTimeout(total=timeout)) as response:
                status = response.status
                raw = await _read_capped(response)
                retry_after = response.headers.get("Retry-After")
        except TimeoutError:
            problem = f"timed out after {number(timeout)} s"
        except aiohttp.ClientError as exc:
            problem = f"connection failed ({type(exc).__name__})"
        else:
            if 200 <= status < 300:
                try:
                    return json.loads(raw)
                except ValueError:
                    raise JudgeCallError(f"HTTP {status} with a body that is not JSON") from None
            detail = _error_detail(raw, secrets)
            problem = f"HTTP {status}{detail}"
            if status == 429:
                wait = retry_after_seconds(retry_after)
                if wait is not None and wait > retry.retry_after_cap:
                    raise JudgeCallError(f"rate limited (HTTP 429): Retry-After {number(wait)} s exceeds the "
                                         f"{number(retry.retry_after_cap)} s cap")
            elif status < 500:
                raise JudgeCallError(problem)
        if attempt == attempts:
            break
        delay = wait if wait is not None else backoff_delay(retry, attempt)
        log.warning("%s judge: %s; attempt %d of %d, retrying in %.2f s", label, problem, attempt, attempts, delay)
        await asyncio.sleep(delay)
    raise JudgeCallError(f"{problem} (gave up after {attempts} attempt{'s' if attempts != 1 else ''})")


async def _read_capped(response: aiohttp.ClientResponse) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(65536):
        size += len(chunk)
        if size > MAX_BODY:
            raise JudgeCallError(f"HTTP {response.status} with a body over {MAX_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _error_detail(raw: bytes, secrets: Sequence[str | None]) -> str:
    """The provider's own error message (Google and Azure both use {"error": {"message": ...}}), if any."""
    try:
        message = json.loads(raw)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return ""
    if not isinstance(message, str) or not message.strip():
        return ""
    return ": " + clip(redact(" ".join(message.split()), secrets), 200)
