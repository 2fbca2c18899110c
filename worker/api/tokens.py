"""Bearer tokens of the API service (``python -m worker api``): ``tw1.<organization>.<user>.<expires>.<mac>``.

The token names a user of the database and their organization; ``mac`` is an HMAC-SHA256 over the rest with the
first key of ``API_TOKEN_SECRET`` (every key verifies, for rotation). The service then checks that the user still
exists in that organization (a tenant session, under row-level security), so deleting the user revokes their
tokens; rotating the keys revokes all. No database table holds tokens, and nothing here imports FastAPI: the
``api-token`` command mints tokens without the ``api`` extra.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

VERSION = "tw1"
#: Thirty days: a token for local use outlives a working session, not a quarter.
DEFAULT_LIFETIME = 30 * 24 * 3600
# A longer header is refused before any parsing or hashing.
MAX_TOKEN_LENGTH = 256


@dataclass(frozen=True, slots=True)
class TokenUser:
    """What a valid token names; ``id`` and ``organization_id`` are what the router's user needs."""

    id: uuid.UUID
    organization_id: uuid.UUID
    expires_at: int


def _mac(key: str, payload: str) -> str:
    digest = hmac.new(key.encode(), payload.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def mint(keys: Sequence[str], organization_id: object, user_id: object, *, lifetime: int = DEFAULT_LIFETIME,
         now: float | None = None) -> str:
    """A token for ``user_id`` of ``organization_id`` valid ``lifetime`` seconds, signed with ``keys[0]``."""
    if not keys:
        raise ValueError("API_TOKEN_SECRET is empty: no key to sign a token with")
    if lifetime < 1:
        raise ValueError("a token lifetime must be at least one second")
    organization, user = uuid.UUID(str(organization_id)), uuid.UUID(str(user_id))
    expires = int((time.time() if now is None else now) + lifetime)
    payload = f"{VERSION}.{organization}.{user}.{expires}"
    return f"{payload}.{_mac(keys[0], payload)}"


def verify(keys: Sequence[str], token: str, *, now: float | None = None) -> TokenUser | None:
    """The user a token names, or None when it is malformed, expired or signed with no key of ``keys``."""
    if not keys or not token or len(token) > MAX_TOKEN_LENGTH or not token.isascii():
        return None
    parts = token.split(".")
    if len(parts) != 5 or parts[0] != VERSION:
        return None
    payload, mac = token.rsplit(".", 1)
    # Every key is tried, valid or not, so the time taken does not tell which key (if any) matched.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(_mac(key, payload), mac)
    if not matched:
        return None
    try:
        organization, user, expires = uuid.UUID(parts[1]), uuid.UUID(parts[2]), int(parts[3])
    except ValueError:
        return None
    if expires <= (time.time() if now is None else now):
        return None
    return TokenUser(id=user, organization_id=organization, expires_at=expires)
