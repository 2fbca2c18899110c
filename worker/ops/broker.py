"""What waits in the broker: queue depths (priority sub-queues included), unacknowledged messages, purge.

kombu's Redis transport keeps a queue as one list per priority step: ``<queue>`` for priority 0 and
``<queue>\\x06\\x16<N>`` for the others; a worker pops from the list's right end, so the oldest waiting message is
the last element. A fetched message stays in the ``unacked`` hash (fetch time in ``unacked_index``) until it is
acknowledged. Every key carries ``REDIS_KEY_PREFIX``. Reads use a plain client (kombu prefixes only some commands).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from worker.routing import DEFAULT_QUEUE, EXECUTION_QUEUE

BINDING_PREFIX = "_kombu.binding."
SEP = "\x06\x16"
CHORD_UNLOCK = "celery.chord_unlock"


@dataclass
class QueueDepth:
    name: str
    by_priority: dict[int, int]
    unacked: int = 0
    oldest_waiting_age: float | None = None  # seconds; None: the message carries no send time
    oldest_unacked_age: float | None = None

    @property
    def waiting(self) -> int:
        return sum(self.by_priority.values())

    def line(self) -> str:
        priorities = " ".join(f"priority{p}={n}" for p, n in sorted(self.by_priority.items()))
        return (f"queue={self.name} waiting={self.waiting} {priorities} unacked={self.unacked} "
                f"oldest_waiting={_age(self.oldest_waiting_age, self.waiting)} "
                f"oldest_unacked={_age(self.oldest_unacked_age, self.unacked)}")

    def as_json(self) -> dict[str, Any]:
        return {"queue": self.name, "waiting": self.waiting,
                "by_priority": {str(p): n for p, n in sorted(self.by_priority.items())},
                "unacked": self.unacked, "oldest_waiting_seconds": self.oldest_waiting_age,
                "oldest_unacked_seconds": self.oldest_unacked_age}


def _age(seconds: float | None, count: int) -> str:
    if not count:
        return "-"
    return "unknown" if seconds is None else f"{seconds:.0f}s"


@dataclass
class BrokerView:
    """A plain Redis client on the broker, the key prefix, and kombu's names for the keys."""

    client: Any
    channel: Any
    prefix: str
    priority_steps: list[int] = field(default_factory=list)

    def key(self, queue: str, priority: int) -> str:
        return self.prefix + (queue if priority == 0 else f"{queue}{SEP}{priority}")


@contextmanager
def broker_view(app: Any) -> Iterator[BrokerView]:
    import redis

    with app.connection_for_write() as connection:
        channel = connection.default_channel
        client = redis.Redis(connection_pool=channel.client.connection_pool)
        yield BrokerView(client, channel, channel.global_keyprefix or "", list(channel.priority_steps))


def known_queues(view: BrokerView, configured: tuple[str, ...] = ()) -> list[str]:
    """The product's queues, those configured for workers, and every queue bound in the broker (not Celery's
    own control and event queues)."""
    names = {DEFAULT_QUEUE, EXECUTION_QUEUE, *configured}
    for key in view.client.scan_iter(match=f"{view.prefix}{BINDING_PREFIX}*", count=500):
        exchange = _text(key)[len(view.prefix) + len(BINDING_PREFIX):]
        if exchange.endswith("pidbox") or exchange.startswith("celeryev"):
            continue
        for member in view.client.smembers(key):
            names.add(_text(member).split(SEP)[-1])
    return sorted(name for name in names if name)


def _unacked_by_queue(view: BrokerView) -> dict[str, list[float]]:
    """Fetch times of the unacknowledged messages, by the queue they came from (their routing key)."""
    times = dict(view.client.zrange(view.prefix + view.channel.unacked_index_key, 0, -1, withscores=True))
    found: dict[str, list[float]] = {}
    for tag, payload in view.client.hscan_iter(view.prefix + view.channel.unacked_key, count=500):
        try:
            routing_key = json.loads(payload)[2]
        except (ValueError, LookupError, TypeError):
            routing_key = "?"
        found.setdefault(str(routing_key), []).append(times.get(tag, time.time()))
    return found


def _sent_at(raw: bytes | None) -> float | None:
    """A send time the message itself carries (a ``timestamp`` property or header), if any."""
    if not raw:
        return None
    try:
        envelope = json.loads(raw)
        properties, headers = envelope.get("properties") or {}, envelope.get("headers") or {}
        value = properties.get("timestamp") or headers.get("timestamp") or headers.get("sent_at")
        return float(value) if value is not None else None
    except (ValueError, TypeError, AttributeError):
        return None


def queue_depths(view: BrokerView, queues: list[str]) -> tuple[list[QueueDepth], int]:
    """Every queue's depth, and the number of unacknowledged messages in all (some may come from other queues)."""
    unacked = _unacked_by_queue(view)
    now = time.time()
    depths = []
    for queue in queues:
        by_priority = {step: int(view.client.llen(view.key(queue, step))) for step in view.priority_steps}
        sent = [_sent_at(view.client.lindex(view.key(queue, step), -1)) for step, n in by_priority.items() if n]
        known = [s for s in sent if s is not None]
        fetched = unacked.get(queue, [])
        depths.append(QueueDepth(queue, by_priority, len(fetched),
                                 now - min(known) if known and len(known) == len(sent) else None,
                                 now - min(fetched) if fetched else None))
    return depths, sum(len(times) for times in unacked.values())


def waiting_messages(view: BrokerView, queues: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, envelope) of every waiting and every unacknowledged message."""
    for queue in queues:
        for step in view.priority_steps:
            for raw in view.client.lrange(view.key(queue, step), 0, -1):
                envelope = _envelope(raw)
                if envelope is not None:
                    yield f"waiting:{queue}", envelope
    for _tag, payload in view.client.hscan_iter(view.prefix + view.channel.unacked_key, count=500):
        try:
            envelope = json.loads(payload)[0]
        except (ValueError, LookupError, TypeError):
            continue
        if isinstance(envelope, dict):
            yield "unacked", envelope


def _envelope(raw: bytes) -> dict[str, Any] | None:
    try:
        envelope = json.loads(raw)
    except ValueError:
        return None
    return envelope if isinstance(envelope, dict) else None


def purge(view: BrokerView, queue: str) -> int:
    """Delete every waiting message of ``queue`` (all priorities); unacknowledged ones stay with their workers."""
    return int(view.channel.queue_purge(queue) or 0)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
