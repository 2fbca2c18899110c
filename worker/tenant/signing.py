"""Signed tenants: an HMAC that lets a worker refuse task messages whose tenant nobody with the key chose.

Anyone who can write to the broker can otherwise put any ``organization_id`` into a message. With
``TENANT_SIGNING_KEY`` set, every message the product publishes carries the header ``tenant_signature``::

    v1:<key id>:<hex HMAC-SHA256(key, canonical message)>

and the consumer guard (worker/message_guard/consumer.py) dead-letters a message whose signature is missing,
malformed, made with an unknown key or wrong, before the task runs. The canonical message covers everything a
forger could use to choose the tenant the worker runs as:

- the task id and task name;
- ``organization_id``/``user_id`` at the top level of the headers and inside a nested ``headers`` entry (the task
  falls back to the nested one, see worker/base_task.py ``_header``), empty when absent, so that a tenant can be
  neither added to nor stripped from a signed message;
- a SHA-256 of the serialized body: the task falls back to ``organization_id``/``user_id`` kwargs, and the body
  embeds chain steps, callbacks and chord parts whose options name the tenant of messages the worker itself will
  publish (and sign). Without the body a forger could replay a signed header set with a body of their own.

Several keys may be configured (rotation): the first signs, every one verifies. The key id is a short hash of the
key, never the key itself; the key is kept only in this object, never in ``app.conf`` (``celery inspect conf``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from worker.tenant.context import ORGANIZATION_HEADER, USER_HEADER

SIGNATURE_HEADER = "tenant_signature"
VERSION = "v1"
MIN_KEY_LENGTH = 32  # characters; a random key of this length is out of reach of brute force
_KEY_ID_LENGTH = 8  # hex characters of SHA-256(key): names a key in signatures and logs without revealing it


def key_id(key: bytes) -> str:
    """The public name of a key: a short hash, so that rotation needs no separate key ids."""
    return hashlib.sha256(b"tenant-signing-key-id\0" + key).hexdigest()[:_KEY_ID_LENGTH]


def _text(value: Any) -> str:
    """A header or kwarg value as canonical text; types are kept apart so that 1 and "1" differ."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, uuid.UUID):  # kombu's json round-trips UUID objects
        return str(value)
    return f"{type(value).__name__}:{value!r}"


def body_bytes(body: bytes | str) -> bytes:
    return body if isinstance(body, bytes) else body.encode("utf-8")


def canonical(headers: Mapping[str, Any], body: bytes | str) -> bytes:
    """The bytes the HMAC covers; one JSON array of strings, so no field can bleed into the next."""
    nested = headers.get("headers")
    nested = nested if isinstance(nested, Mapping) else {}
    fields = [VERSION, _text(headers.get("id")), _text(headers.get("task")),
              _text(headers.get(ORGANIZATION_HEADER)), _text(headers.get(USER_HEADER)),
              _text(nested.get(ORGANIZATION_HEADER)), _text(nested.get(USER_HEADER)),
              hashlib.sha256(body_bytes(body)).hexdigest()]
    return json.dumps(fields, separators=(",", ":")).encode("utf-8")


class TenantSigner:
    """Signs with the first key, verifies with any of them."""

    def __init__(self, keys: Sequence[str | bytes]) -> None:
        if not keys:
            raise ValueError("a TenantSigner needs at least one key")
        secrets = [key.encode("utf-8") if isinstance(key, str) else key for key in keys]
        self._keys = {key_id(secret): secret for secret in secrets}
        self.signing_key_id = key_id(secrets[0])
        self._signing_key = secrets[0]

    def __repr__(self) -> str:
        return f"TenantSigner(signs with {self.signing_key_id}, verifies {', '.join(self._keys)})"

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def sign(self, headers: Mapping[str, Any], body: bytes | str) -> str:
        digest = hmac.new(self._signing_key, canonical(headers, body), hashlib.sha256).hexdigest()
        return f"{VERSION}:{self.signing_key_id}:{digest}"

    def problem(self, headers: Mapping[str, Any], body: bytes | str) -> str | None:
        """None when the message carries a valid signature, else why not (safe to log: no key material)."""
        signature = headers.get(SIGNATURE_HEADER)
        if signature is None:
            return f"unsigned message: headers.{SIGNATURE_HEADER} is missing and TENANT_SIGNING_KEY is set"
        if not isinstance(signature, str):
            return f"headers.{SIGNATURE_HEADER} is not a string"
        version, _, rest = signature.partition(":")
        used_key_id, _, digest = rest.partition(":")
        if version != VERSION or not used_key_id or not digest:
            return f"headers.{SIGNATURE_HEADER} is not {VERSION}:<key id>:<hex digest>"
        key = self._keys.get(used_key_id)
        if key is None:
            return f"headers.{SIGNATURE_HEADER} names an unknown key id (known: {', '.join(self._keys)})"
        expected = hmac.new(key, canonical(headers, body), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected.encode("ascii"), digest.encode("utf-8", "backslashreplace")):
            return f"headers.{SIGNATURE_HEADER} does not match the task id, name, tenant and body"
        return None


def signer_from_keys(keys: Sequence[str]) -> TenantSigner | None:
    """The signer for the configured keys (TENANT_SIGNING_KEY), or None when signing is off."""
    return TenantSigner(keys) if keys else None
