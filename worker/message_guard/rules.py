"""What a message must look like before kombu and Celery may touch it; each check names the first problem.

Pure functions over decoded JSON, shared by the consumer guard and the publish-time refusal, so both sides
agree on what is malformed. Every check mirrors a place where kombu 5.7 or Celery 5.6 would raise out of the
consumer (and end the worker) on that value.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any

from celery.utils.time import maybe_iso8601

KNOWN_BODY_ENCODINGS = (None, "", "base64")  # kombu's virtual channel knows only base64
OPTIONAL_TEXT_HEADERS = ("shadow", "root_id", "parent_id", "group", "argsrepr", "kwargsrepr", "origin", "lang")
OPTIONAL_TEXT_PROPERTIES = ("correlation_id", "reply_to", "content_type", "content_encoding")
EMBED_KEYS = ("callbacks", "errbacks", "chain", "chord")  # what Celery's as_task_v2 puts in the body


def short(value: Any, limit: int = 60) -> str:
    """A bounded repr of an untrusted value, for reasons."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_seconds(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value) and value >= 0


def envelope_problem(envelope: Any) -> str | None:
    """Problems kombu's Redis channel and Message would raise on (before Celery sees the message)."""
    if not isinstance(envelope, dict):
        return f"envelope is not a JSON object but {type(envelope).__name__}"
    properties = envelope.get("properties")
    if not isinstance(properties, dict):
        return f"envelope properties is not an object: {short(properties)}"
    if not isinstance(properties.get("delivery_tag"), str) or not properties["delivery_tag"]:
        return f"properties.delivery_tag is not a non-empty string: {short(properties.get('delivery_tag'))}"
    delivery_info = properties.get("delivery_info")
    if not isinstance(delivery_info, dict):
        return f"properties.delivery_info is not an object: {short(delivery_info)}"
    for key in ("exchange", "routing_key"):
        if not isinstance(delivery_info.get(key), str):
            return f"properties.delivery_info.{key} is not a string: {short(delivery_info.get(key))}"
    for key in OPTIONAL_TEXT_PROPERTIES:
        if properties.get(key) is not None and not isinstance(properties[key], str):
            return f"properties.{key} is not a string: {short(properties[key])}"
    for key in ("content-type", "content-encoding"):
        if envelope.get(key) is not None and not isinstance(envelope[key], str):
            return f"envelope {key} is not a string: {short(envelope[key])}"
    headers = envelope.get("headers")
    if headers is not None and not isinstance(headers, dict):
        return f"headers is not an object: {short(headers)}"
    return _body_encoding_problem(envelope.get("body"), properties.get("body_encoding"))


def _body_encoding_problem(body: Any, encoding: Any) -> str | None:
    if not isinstance(body, str) or not body:
        return f"body is missing or not a string: {short(body)}"
    if encoding not in KNOWN_BODY_ENCODINGS:
        return f"properties.body_encoding {short(encoding)} is not one of: base64"
    if encoding == "base64":
        try:
            base64.b64decode(body.encode())  # as kombu's Base64 codec decodes it
        except (binascii.Error, ValueError, UnicodeError) as exc:
            return f"body is not valid base64: {exc}"
    return None


def headers_problem(headers: dict[str, Any]) -> str | None:
    """Protocol-2 task headers that Celery's strategy and Request would raise on."""
    for key in ("task", "id"):
        if not isinstance(headers.get(key), str) or not headers[key]:
            return f"headers.{key} is not a non-empty string: {short(headers.get(key))}"
    for key in OPTIONAL_TEXT_HEADERS:
        if headers.get(key) is not None and not isinstance(headers[key], str):
            return f"headers.{key} is not a string: {short(headers[key])}"
    for key in ("retries", "group_index", "replaced_task_nesting"):
        value = headers.get(key)
        if value is not None and not (_is_int(value) and value >= 0):
            return f"headers.{key} is not a whole number >= 0: {short(value)}"
    timelimit = headers.get("timelimit")
    if timelimit is not None and not (isinstance(timelimit, list | tuple) and len(timelimit) == 2
                                      and all(v is None or _is_seconds(v) for v in timelimit)):
        return f"headers.timelimit is not [hard, soft] seconds (numbers >= 0 or null): {short(timelimit)}"
    for key in ("eta", "expires"):
        problem = _iso_time_problem(key, headers.get(key))
        if problem:
            return problem
    if headers.get("ignore_result") is not None and not isinstance(headers["ignore_result"], bool):
        return f"headers.ignore_result is not true/false: {short(headers['ignore_result'])}"
    for key in ("headers", "stamps"):
        if headers.get(key) is not None and not isinstance(headers[key], dict):
            return f"headers.{key} is not an object: {short(headers[key])}"
    stamped = headers.get("stamped_headers")
    if stamped is not None and not (isinstance(stamped, list | tuple) and all(isinstance(s, str) for s in stamped)):
        return f"headers.stamped_headers is not a list of strings: {short(stamped)}"
    return None


def _iso_time_problem(key: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        return f"headers.{key} is not an ISO 8601 time string: {short(value)}"
    try:
        parsed = maybe_iso8601(value)
    except (ValueError, TypeError, OverflowError) as exc:
        return f"headers.{key} is not an ISO 8601 time: {short(value)} ({exc})"
    if parsed is None:
        # An empty string parses to None, which Celery's request then fails on outside any handler (the worker
        # stopped with "Unrecoverable error": found by the fuzz test).
        return f"headers.{key} is not an ISO 8601 time: {short(value)}"
    return None


def body_problem(body: Any) -> str | None:
    """A decoded protocol-2 body must be [args, kwargs, embed] with the embed Celery itself writes."""
    if not isinstance(body, list | tuple) or len(body) != 3:
        return f"body is not [args, kwargs, embed]: {short(body)}"
    args, kwargs, embed = body
    if not isinstance(args, list | tuple):
        return f"body args is not a list: {short(args)}"
    if not isinstance(kwargs, dict):
        return f"body kwargs is not an object: {short(kwargs)}"
    if not isinstance(embed, dict):
        return f"body embed is not an object: {short(embed)}"
    unknown = sorted(str(key) for key in embed if key not in EMBED_KEYS)
    if unknown:
        return f"body embed has unexpected keys {short(unknown)}; allowed: {', '.join(EMBED_KEYS)}"
    for key in ("callbacks", "errbacks", "chain"):
        value = embed.get(key)
        if value is not None and not (isinstance(value, list) and all(_is_signature(s) for s in value)):
            return f"body embed {key} is not a list of task signatures: {short(value)}"
    if embed.get("chord") is not None and not _is_signature(embed["chord"]):
        return f"body embed chord is not a task signature: {short(embed['chord'])}"
    return None


def _is_signature(value: Any) -> bool:
    """The fields Celery's ``signature(dict)`` and ``apply_async`` use, with the types they need."""
    return (isinstance(value, dict) and isinstance(value.get("task"), str) and bool(value["task"])
            and isinstance(value.get("args", ()), list | tuple) and isinstance(value.get("kwargs", {}), dict)
            and isinstance(value.get("options", {}), dict)
            and isinstance(value.get("subtask_type"), str | type(None)))
