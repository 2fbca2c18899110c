"""EndpointClient: one test's call to a user's LLM application, with templates, auth, guard, retries, caps.

One client per event loop. It owns one aiohttp session (a connection pool sized for hundreds of calls in
flight, no cookie jar shared between calls, no proxy from the environment), the OAuth2 token cache and the
target guard. ``invoke`` never raises for a problem of the endpoint or its definition: it returns an
Invocation with ``ok=False`` and an error_type from spec.ERROR_TYPES. Cancellation propagates.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp
from aiohttp.resolver import DefaultResolver
from yarl import URL

from worker.execution.endpoint.auth import TokenCache, auth_headers, is_auth_header, secrets_of
from worker.execution.endpoint.errors import BlockedTarget, CallError
from worker.execution.endpoint.guard import ALLOWED_SCHEMES, GuardedResolver, TargetGuard
from worker.execution.endpoint.mapping import map_response
from worker.execution.endpoint.retry import parse_retry_after, with_retries
from worker.execution.endpoint.template import render_headers, render_query, render_request_body
from worker.execution.spec import HTTP_METHODS, EndpointSpec, Invocation, RetryPolicy

log = logging.getLogger(__name__)

USER_AGENT = "rhesis-worker"
MAX_REDIRECTS = 5
#: Connections the pool may hold open at once, across all endpoints of this client.
CONNECTION_LIMIT = 1024
ERROR_SNIPPET_BYTES = 2048
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    url: URL
    headers: dict[str, str]
    body: bytes | None
    content_type: str | None


@dataclass(slots=True)
class _Answer:
    status: int
    body: bytes
    charset: str | None
    retry_after: str | None


class _CallState:
    """What invoke reports even when the call fails."""

    __slots__ = ("attempts", "latency_ms", "refreshed", "status", "token")

    def __init__(self) -> None:
        self.attempts = 0
        self.latency_ms: float | None = None
        self.status: int | None = None
        self.token: str | None = None
        self.refreshed = False


def _one_line(text: str, limit: int = 200) -> str:
    return " ".join(text.split())[:limit]


def _scrub(message: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret:
            message = message.replace(secret, "***")
    return _one_line(message, 500)


def _error_snippet(body: bytes, secrets: tuple[str, ...]) -> str:
    """The start of an error body for the error line. Scrubbed before it is cut: cutting first would leave the
    head of a secret that straddles the cut, which the later scrub of the whole message no longer recognises."""
    text = body.decode("utf-8", errors="replace")
    if len(body) >= ERROR_SNIPPET_BYTES:
        # The read stopped at the byte limit and may have split a secret; whitespace folding could pull that
        # head into the snippet, so the tail where it could sit goes.
        text = text[:max(0, len(text) - max((len(secret) for secret in secrets), default=0))]
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _one_line(text)


class EndpointClient:
    def __init__(self, *, allow_private_targets: bool, max_response_bytes: int = 1_048_576,
                 retry: RetryPolicy = RetryPolicy(), max_output_chars: int = 65_536,  # noqa: B008 - frozen value
                 extra_allowed_networks: tuple[str, ...] = ()) -> None:
        """``extra_allowed_networks`` lets tests treat one loopback server as public; leave it empty."""
        self._guard = TargetGuard(allow_private=allow_private_targets, extra_allowed_networks=extra_allowed_networks)
        self._max_response_bytes = max_response_bytes
        self._retry = retry
        self._max_output_chars = max_output_chars
        self._tokens = TokenCache()
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> EndpointClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def _http(self) -> aiohttp.ClientSession:
        # Created on first use, inside the running loop the session belongs to.
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=CONNECTION_LIMIT, limit_per_host=0,
                resolver=GuardedResolver(self._guard, DefaultResolver()))
            self._session = aiohttp.ClientSession(
                connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False,
                headers={"User-Agent": USER_AGENT}, timeout=aiohttp.ClientTimeout(total=None))
        return self._session

    async def invoke(self, endpoint: EndpointSpec, variables: Mapping[str, Any]) -> Invocation:
        state = _CallState()
        try:
            request = _prepare(endpoint, variables, self._guard)
            output, context, metadata = await with_retries(
                self._retry, lambda _number: self._attempt(endpoint, request, state))
        except CallError as error:
            secrets = (*secrets_of(endpoint.auth), *((state.token,) if state.token else ()))
            return Invocation(ok=False, http_status=error.http_status or state.status, latency_ms=state.latency_ms,
                              attempts=state.attempts, error_type=error.error_type,
                              error=_scrub(error.message, secrets))
        except Exception as exc:  # a bug here must cost one test, not the run
            log.warning("endpoint %s: internal error %s", endpoint.id, type(exc).__name__)
            return Invocation(ok=False, http_status=state.status, latency_ms=state.latency_ms,
                              attempts=state.attempts, error_type="internal",
                              error=f"internal error in the endpoint client ({type(exc).__name__})")
        return Invocation(ok=True, output=output, context=context, metadata=metadata, http_status=state.status,
                          latency_ms=state.latency_ms, attempts=state.attempts)

    async def _attempt(self, endpoint: EndpointSpec, request: _Request, state: _CallState) -> tuple[str, Any, Any]:
        try:
            async with asyncio.timeout(endpoint.timeout_seconds):
                answer = await self._send_authenticated(endpoint, request, state)
        except TimeoutError:
            raise CallError("timeout", f"no complete answer within {endpoint.timeout_seconds:g}s",
                            http_status=state.status) from None
        status = answer.status
        if 200 <= status < 300:
            try:
                text = answer.body.decode(answer.charset or "utf-8", errors="replace")
            except LookupError:
                text = answer.body.decode("utf-8", errors="replace")
            return map_response(endpoint, text, self._max_output_chars)
        detail = f"endpoint answered HTTP {status}"
        snippet = _error_snippet(answer.body, (*secrets_of(endpoint.auth), *((state.token,) if state.token else ())))
        if snippet:
            detail += f": {snippet}"
        if status == 429:
            raise CallError("rate_limited", detail, http_status=status,
                            retry_after=parse_retry_after(answer.retry_after))
        if status >= 500:
            raise CallError("http_5xx", detail, http_status=status)
        raise CallError("http_4xx", detail, http_status=status)

    async def _send_authenticated(self, endpoint: EndpointSpec, request: _Request, state: _CallState) -> _Answer:
        """The endpoint's answer; an OAuth2 token the endpoint rejects with 401 is dropped and the request sent
        once more with a fresh one."""
        while True:
            headers = await self._guarded(
                auth_headers(endpoint.id, endpoint.auth, self._tokens, self._post_token), "token endpoint")
            if endpoint.auth.kind == "oauth2_client_credentials":
                state.token = headers["Authorization"].removeprefix("Bearer ")
            state.attempts += 1
            started = time.perf_counter()
            try:
                answer = await self._guarded(self._follow(endpoint, request, headers, state), "endpoint")
            finally:
                state.latency_ms = (time.perf_counter() - started) * 1000.0
            state.status = answer.status
            if answer.status == 401 and state.token and not state.refreshed:
                state.refreshed = True
                self._tokens.invalidate(endpoint.id, endpoint.auth, state.token)
                continue
            return answer

    async def _guarded(self, operation: Any, what: str) -> Any:
        """Awaits ``operation`` and turns transport failures into CallErrors. Messages name the host, never
        the URL (a query string may carry a key)."""
        try:
            return await operation
        except CallError:
            raise
        except BlockedTarget as exc:
            raise CallError("blocked_target", f"{what} target refused: {exc}") from None
        except aiohttp.ClientConnectorDNSError as exc:
            if isinstance(exc.os_error, BlockedTarget):
                raise CallError("blocked_target", f"{what} target refused: {exc.os_error}") from None
            raise CallError("connection", f"{what} host {exc.host} cannot be resolved") from None
        except aiohttp.ClientConnectorError as exc:
            reason = exc.os_error.strerror or type(exc.os_error).__name__
            raise CallError("connection", f"cannot connect to {what} {exc.host}:{exc.port}: {reason}") from None
        except aiohttp.InvalidURL:
            raise CallError("invalid_endpoint", f"{what} URL is not valid") from None
        except TimeoutError:
            raise
        except (aiohttp.ClientError, OSError) as exc:
            raise CallError("connection", f"{what} connection failed: {type(exc).__name__}") from None

    async def _follow(self, endpoint: EndpointSpec, request: _Request, auth: dict[str, str],
                      state: _CallState) -> _Answer:
        """Sends the request, following up to MAX_REDIRECTS redirects by hand so each hop passes the guard.
        Authentication goes only to the endpoint's own origin."""
        method, url, body = request.method, request.url, request.body
        origin = url.origin()
        for _hop in range(MAX_REDIRECTS + 1):
            self._guard.check_url(url)
            same_origin = url.origin() == origin
            headers = {name: value for name, value in request.headers.items()
                       if same_origin or not is_auth_header(name, endpoint.auth)}
            if same_origin:
                headers.update(auth)
            if body is not None and request.content_type:
                headers.setdefault("Content-Type", request.content_type)
            async with self._http().request(method, url, data=body, headers=headers, allow_redirects=False) as response:
                location = response.headers.get("Location")
                if response.status in _REDIRECTS and location:
                    state.status = response.status
                    if (response.status == 303 and method != "HEAD") or (
                            response.status in (301, 302) and method == "POST"):
                        method, body = "GET", None
                    url = url.join(URL(location))
                    continue
                if 200 <= response.status < 300:
                    data = await self._read(response)
                else:
                    data = await response.content.read(ERROR_SNIPPET_BYTES)
                return _Answer(response.status, data, response.charset, response.headers.get("Retry-After"))
        raise CallError("http_4xx", f"endpoint redirected more than {MAX_REDIRECTS} times", http_status=state.status)

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        limit = self._max_response_bytes
        if response.content_length is not None and response.content_length > limit:
            raise CallError("response_too_large", f"answer of {response.content_length} bytes is over the "
                            f"{limit}-byte limit", http_status=response.status)
        data = bytearray()
        async for chunk in response.content.iter_chunked(65_536):
            data += chunk
            if len(data) > limit:
                raise CallError("response_too_large", f"answer is over the {limit}-byte limit",
                                http_status=response.status)
        return bytes(data)

    async def _post_token(self, token_url: str, form: dict[str, str]) -> tuple[int, bytes]:
        url = URL(token_url)
        self._guard.check_url(url)
        async with self._http().post(url, data=form, allow_redirects=False,
                                     headers={"Accept": "application/json"}) as response:
            return response.status, await response.content.read(65_536)


def _prepare(endpoint: EndpointSpec, variables: Mapping[str, Any], guard: TargetGuard) -> _Request:
    method = endpoint.method.upper()
    if method not in HTTP_METHODS:
        raise CallError("invalid_endpoint", f"method {endpoint.method!r} is not one of {', '.join(HTTP_METHODS)}")
    if not endpoint.timeout_seconds or endpoint.timeout_seconds <= 0:
        raise CallError("invalid_endpoint", "timeout_seconds must be positive")
    try:
        url = URL(endpoint.url)
    except (ValueError, TypeError):
        raise CallError("invalid_endpoint", "endpoint URL is not valid") from None
    if not url.scheme or (not url.absolute and url.scheme in ALLOWED_SCHEMES):
        raise CallError("invalid_endpoint", "endpoint URL is not absolute")
    try:
        # Early for a refused scheme or IP literal; _follow checks again on every hop.
        guard.check_url(url)
    except BlockedTarget as exc:
        raise CallError("blocked_target", f"endpoint target refused: {exc}") from None
    query = render_query(endpoint, variables)
    if query:
        url = url.extend_query(query)
    body, content_type = render_request_body(endpoint, variables)
    return _Request(method, url, render_headers(endpoint, variables), body, content_type)
