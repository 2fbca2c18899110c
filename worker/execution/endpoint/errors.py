"""The one exception the endpoint modules raise for a failed call; the client turns it into an Invocation."""

from __future__ import annotations

from worker.execution.spec import ERROR_TYPES

#: Failures that another attempt may cure; everything else ends the call at once.
RETRYABLE: frozenset[str] = frozenset({"timeout", "connection", "http_5xx", "rate_limited"})


class CallError(Exception):
    """``error_type`` is one of spec.ERROR_TYPES; ``message`` is one line for people and never holds a secret."""

    def __init__(self, error_type: str, message: str, *, http_status: int | None = None,
                 retry_after: float | None = None) -> None:
        assert error_type in ERROR_TYPES, error_type
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.http_status = http_status
        #: Seconds a 429 asked us to wait, when it said.
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.error_type in RETRYABLE


class BlockedTarget(OSError):
    """The target guard refused an address. An OSError so that aiohttp's connector passes it on (wrapped in
    ClientConnectorDNSError) when the guarded resolver raises it."""
