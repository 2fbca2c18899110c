"""Authentication headers for endpoint calls, with the OAuth2 client-credentials token cache.

Tokens are fetched with client_secret_post (grant_type, client_id, client_secret, scope, audience in the form
body). One fetch at a time per cache key: a hundred calls that find no token wait for the first one's fetch
instead of sending a hundred token requests.

One EndpointClient serves every tenant's lanes in a process, so the cache key holds the endpoint's id (an
endpoint belongs to exactly one organization) and a SHA-256 of the client secret. Without them, another
organization could define an endpoint with the same token_url, client_id, scopes and audience, any secret and a
URL it controls, and be handed the first organization's cached bearer token.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from worker.execution.endpoint.errors import CallError
from worker.execution.spec import EndpointAuth

#: A token is used until this long before it expires (or a tenth of its life, when that is shorter).
EXPIRY_MARGIN_SECONDS = 30.0
#: A token answer without expires_in is kept this long.
DEFAULT_TOKEN_LIFETIME = 300.0
_CREDENTIAL_NAME = re.compile(r"auth|key|token|secret|cookie|session|password|credential|signature")

#: (endpoint id, token_url, client_id, scopes, audience, sha256 of the client secret)
TokenKey = tuple[str, str, str, tuple[str, ...], str | None, str]
#: (token_url, form) -> (status, body); supplied by the client so the fetch goes through the guarded session.
TokenPost = Callable[[str, dict[str, str]], Awaitable[tuple[int, bytes]]]


@dataclass(frozen=True, slots=True)
class _Token:
    value: str
    expires_at: float


def token_key(endpoint_id: str, auth: EndpointAuth) -> TokenKey:
    # The secret is hashed so the key (kept for the process's life) does not hold it in clear.
    secret_hash = hashlib.sha256((auth.client_secret or "").encode()).hexdigest()
    return (endpoint_id, auth.token_url or "", auth.client_id or "", tuple(auth.scopes), auth.audience, secret_hash)


class TokenCache:
    def __init__(self) -> None:
        self._tokens: dict[TokenKey, _Token] = {}
        self._locks: dict[TokenKey, asyncio.Lock] = {}

    async def token(self, endpoint_id: str, auth: EndpointAuth, post: TokenPost) -> str:
        key = token_key(endpoint_id, auth)
        cached = self._tokens.get(key)
        if cached is not None and cached.expires_at > time.monotonic():
            return cached.value
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            # Another call may have fetched it while this one waited for the lock.
            cached = self._tokens.get(key)
            if cached is not None and cached.expires_at > time.monotonic():
                return cached.value
            token = await _fetch_token(auth, post)
            self._tokens[key] = token
            return token.value

    def invalidate(self, endpoint_id: str, auth: EndpointAuth, rejected: str) -> None:
        """Forget the token this endpoint rejected; if another call already replaced it, keep the new one.
        Other endpoints' tokens are untouched."""
        key = token_key(endpoint_id, auth)
        cached = self._tokens.get(key)
        if cached is not None and cached.value == rejected:
            del self._tokens[key]


async def _fetch_token(auth: EndpointAuth, post: TokenPost) -> _Token:
    if not (auth.token_url and auth.client_id and auth.client_secret):
        raise CallError("invalid_endpoint", "oauth2_client_credentials needs token_url, client_id and client_secret")
    form = {"grant_type": "client_credentials", "client_id": auth.client_id, "client_secret": auth.client_secret}
    if auth.scopes:
        form["scope"] = " ".join(auth.scopes)
    if auth.audience:
        form["audience"] = auth.audience
    started = time.monotonic()
    status, body = await post(auth.token_url, form)
    if status >= 500:
        raise CallError("http_5xx", f"token endpoint answered HTTP {status}", http_status=status)
    if status == 429:
        raise CallError("rate_limited", "token endpoint answered HTTP 429", http_status=status)
    if status >= 300:
        raise CallError("http_4xx", f"token endpoint answered HTTP {status}", http_status=status)
    try:
        answer = json.loads(body)
        value = answer["access_token"]
        if not isinstance(value, str) or not value:
            raise TypeError
        lifetime = float(answer.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CallError("invalid_endpoint", "token endpoint answer has no access_token", http_status=status) from None
    margin = min(EXPIRY_MARGIN_SECONDS, lifetime / 10)
    return _Token(value, started + lifetime - margin)


async def auth_headers(endpoint_id: str, auth: EndpointAuth, tokens: TokenCache,
                       post: TokenPost) -> dict[str, str]:
    if auth.kind == "none":
        return {}
    if auth.kind == "bearer_token":
        if not auth.token:
            raise CallError("invalid_endpoint", "bearer_token authentication has no token")
        return {"Authorization": f"Bearer {auth.token}"}
    if auth.kind == "api_key":
        if not auth.token:
            raise CallError("invalid_endpoint", "api_key authentication has no key")
        return {auth.header_name: auth.token}
    if auth.kind == "oauth2_client_credentials":
        return {"Authorization": f"Bearer {await tokens.token(endpoint_id, auth, post)}"}
    raise CallError("invalid_endpoint", f"unknown authentication kind {auth.kind!r}")


def secrets_of(auth: EndpointAuth) -> tuple[str, ...]:
    """Strings that must never appear in an error message."""
    return tuple(value for value in (auth.token, auth.client_secret) if value)


def is_auth_header(name: str, auth: EndpointAuth) -> bool:
    """Headers not sent to another origin after a redirect: the auth kind's own, and configured headers whose
    name says they carry a credential (users put keys in plain headers too)."""
    lowered = name.lower()
    return bool(_CREDENTIAL_NAME.search(lowered)) or (auth.kind == "api_key" and lowered == auth.header_name.lower())
