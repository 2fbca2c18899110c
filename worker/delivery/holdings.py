"""The delivery tags one worker process holds: read from another thread, so every read tolerates concurrent change."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from celery.worker import state as worker_state

from worker.delivery.threadpool import pending_requests_of_every_pool, pending_thread_requests


def _snapshot(read: Callable[[], Iterable[Any]], attempts: int = 20) -> list[Any]:
    """``list(read())``, retried when the collection changes size under us (the consumer's thread owns it)."""
    for _ in range(attempts):
        try:
            return list(read())
        except RuntimeError:
            continue
    return []


def _tag(request: Any) -> str | None:
    message = getattr(request, "message", None)
    tag = getattr(message, "delivery_tag", None)
    return None if tag is None else str(tag)


def held_delivery_tags(consumer: Any | None) -> set[str]:
    """Tags of this process's unacknowledged messages.

    The consumer channel's QoS knows every message fetched on the current connection (including ETA tasks in the
    timer); running and reserved requests add those fetched on an earlier connection that are still running, and
    the threads pool's queue those Celery dropped from its reserved requests at a reconnect that will still run
    here (``threadpool``).
    """
    tags: set[str] = set()
    for requests in (worker_state.active_requests, worker_state.reserved_requests):
        tags.update(tag for tag in map(_tag, _snapshot(lambda requests=requests: requests)) if tag)
    tags.update(tag for tag in map(_tag, pending_thread_requests(getattr(consumer, "pool", None))) if tag)
    task_consumer = getattr(consumer, "task_consumer", None)
    qos = getattr(getattr(task_consumer, "channel", None), "qos", None)
    delivered = getattr(qos, "_delivered", None)
    if delivered is not None:
        tags.update(str(tag) for tag in _snapshot(lambda: delivered.keys()))
    return tags


def running_delivery_tags() -> set[str]:
    """Tags of the messages whose task runs in this process, or will (queued in the threads pool): after a
    connection loss they still end here and are acknowledged by tag, so they must not be given back meanwhile."""
    tags = {tag for tag in map(_tag, _snapshot(lambda: worker_state.active_requests)) if tag}
    tags.update(tag for tag in map(_tag, pending_requests_of_every_pool()) if tag)
    return tags
