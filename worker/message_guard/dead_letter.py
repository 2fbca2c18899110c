"""Keep discarded messages for inspection: a capped Redis list next to the queues, plus one safe log line."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import redis

log = logging.getLogger("worker.message_guard")

DEAD_LETTER_KEY = "dead-letter"  # under the broker's global_keyprefix (REDIS_KEY_PREFIX)
DEAD_LETTER_LIMIT = 1000  # newest entries kept (LTRIM); older ones are dropped
PAYLOAD_LIMIT = 4096  # characters of the raw payload kept per entry
LOG_VALUE_LIMIT = 300


def escape(text: str, limit: int = LOG_VALUE_LIMIT) -> str:
    """One printable line: control characters (newlines too) become escapes, so a message cannot forge log lines."""
    escaped = text.encode("unicode_escape", "backslashreplace").decode("ascii")
    return escaped if len(escaped) <= limit else escaped[:limit] + "..."


def raw_text(raw: bytes | str | Any) -> str:
    if isinstance(raw, bytes):
        return raw.decode("utf-8", "backslashreplace")
    if isinstance(raw, str):
        return raw
    return json.dumps(raw, default=repr)


def dead_letter_key(channel: Any) -> str:
    return f"{getattr(channel, 'global_keyprefix', '') or ''}{DEAD_LETTER_KEY}"


def entry(raw: bytes | str | Any, reason: str, queue: str | None) -> str:
    text = raw_text(raw)
    return json.dumps({"reason": reason, "queue": queue, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "payload": text[:PAYLOAD_LIMIT], "payload_chars": len(text),
                       "truncated": len(text) > PAYLOAD_LIMIT})


def discard(channel: Any, raw: bytes | str | Any, reason: str, queue: str | None,
            unacked_tag: str | None = None) -> None:
    """Log and dead-letter a message that will not be delivered (the caller has already taken it off the queue).

    ``unacked_tag``: the delivery tag under which the fetch recorded it unacknowledged, removed in the same
    transaction (a worker dying before it leaves the message to the recovery, which restores it)."""
    log.error("discarded malformed message from queue %s: %s; payload: %s",
              escape(str(queue)), escape(reason), escape(raw_text(raw), 200))
    client = redis.Redis(connection_pool=channel.pool)  # unprefixed client: we prefix the key ourselves
    key = dead_letter_key(channel)
    prefix = getattr(channel, "global_keyprefix", "") or ""
    with client.pipeline(transaction=True) as pipe:
        pipe.lpush(key, entry(raw, reason, queue))
        pipe.ltrim(key, 0, DEAD_LETTER_LIMIT - 1)
        if unacked_tag is not None:
            pipe.zrem(prefix + channel.unacked_index_key, unacked_tag)
            pipe.hdel(prefix + channel.unacked_key, unacked_tag)
        pipe.execute()
