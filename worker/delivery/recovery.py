"""Give back the unacknowledged messages of dead workers, whatever the visibility timeout.

kombu's Redis transport keeps every fetched, unacknowledged message in the ``unacked`` hash (and its fetch time in
the ``unacked_index`` sorted set), keyed by delivery tag. It restores them only when the channel closes cleanly or
after ``visibility_timeout``; a SIGKILLed worker's messages would wait the whole timeout.

Every worker therefore publishes, every ``PUBLISH_INTERVAL`` seconds, the tags it holds under the key
``<prefix>delivery:held:<node>`` that expires after ``HOLDER_TTL`` seconds: the key is both the list and the
liveness of the node. Every ``SCAN_INTERVAL`` seconds one worker (a Redis lock) restores to its queue each tag that
was fetched more than ``GRACE`` seconds ago and that no live node lists. A live worker publishes its tags well within
``GRACE`` after fetching them, so a message held by a live worker is never restored; a message whose task already
stored a ready result (it ran, but its worker died before the acknowledgement) is dropped instead of restored.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from celery import Celery, states

from worker.delivery.holdings import held_delivery_tags

log = logging.getLogger("worker.delivery")

PUBLISH_INTERVAL = 2.0
HOLDER_TTL = 10
GRACE = 15.0
SCAN_INTERVAL = 5.0
NODES_KEY = "delivery:nodes"
HELD_KEY = "delivery:held:"
LOCK_KEY = "delivery:recovery-lock"


class DeliveryRecovery:
    """A daemon thread of one worker process: publishes its holdings and restores dead workers' messages."""

    def __init__(self, app: Celery, node: str) -> None:
        self.app = app
        self.node = node
        self.consumer: Any = None
        self.stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="delivery-recovery", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self.stopped.set()

    # -- the loop -----------------------------------------------------------------------------------
    def _run(self) -> None:
        next_scan = time.monotonic() + SCAN_INTERVAL
        while not self.stopped.is_set():
            try:
                with self.app.connection_for_write() as connection:
                    channel = connection.default_channel
                    plain = _plain_client(channel)
                    while not self.stopped.is_set():
                        self.publish(plain, channel)
                        if time.monotonic() >= next_scan:
                            next_scan = time.monotonic() + SCAN_INTERVAL
                            self.recover(plain, channel)
                        if self._failing:
                            log.info("delivery recovery reaches the broker again")
                            self._failing = False
                        self.stopped.wait(PUBLISH_INTERVAL)
            except Exception as exc:  # the broker may be away; the thread must outlive it
                if not self._failing:
                    log.warning("delivery recovery cannot reach the broker (%s); retrying", exc)
                    self._failing = True
                self.stopped.wait(PUBLISH_INTERVAL)

    def publish(self, plain: Any, channel: Any) -> None:
        prefix = channel.global_keyprefix
        tags = sorted(held_delivery_tags(self.consumer))
        pipe = plain.pipeline(transaction=True)
        pipe.sadd(prefix + NODES_KEY, self.node)
        pipe.set(prefix + HELD_KEY + self.node, json.dumps(tags), ex=HOLDER_TTL)
        pipe.execute()

    def recover(self, plain: Any, channel: Any) -> int:
        """Restore (or drop, when already done) the unacknowledged messages no live worker holds; how many."""
        prefix = channel.global_keyprefix
        if not plain.set(prefix + LOCK_KEY, self.node, nx=True, ex=int(SCAN_INTERVAL)):
            return 0
        cutoff = time.time() - GRACE
        candidates = {_text(tag) for tag in plain.zrangebyscore(prefix + channel.unacked_index_key, "-inf", cutoff)}
        if not candidates:
            return 0
        held: set[str] = set()
        for node in map(_text, plain.smembers(prefix + NODES_KEY)):
            listed = plain.get(prefix + HELD_KEY + node)
            if listed is None:
                plain.srem(prefix + NODES_KEY, node)  # expired: the node is dead
                log.info("worker %s stopped publishing its deliveries: its messages are given back", node)
            else:
                held.update(json.loads(listed))
        orphans = sorted(candidates - held)
        restored = 0
        for tag in orphans:
            payload = plain.hget(prefix + channel.unacked_key, tag)
            task_id = _task_id(payload)
            if task_id and self._already_done(task_id):
                channel.qos._remove_from_indices(tag).execute()
                log.warning("dropped the unacknowledged message of task %s: it already ran (its worker died "
                            "before acknowledging)", task_id)
                continue
            channel.qos.restore_by_tag(tag)
            restored += 1
        if restored:
            log.warning("gave back %d unacknowledged message(s) held by dead workers", restored)
        return restored

    def _already_done(self, task_id: str) -> bool:
        backend = self.app.backend
        # One read, no retries: under result_backend_always_retry get_task_meta waits for an unreachable backend
        # without end, and this thread must go on publishing the holdings.
        read = getattr(backend, "_get_task_meta_for", backend.get_task_meta)
        try:
            return read(task_id).get("status") in states.READY_STATES
        except Exception:  # an unreachable backend must not lose the message: restore it
            return False


def _plain_client(channel: Any) -> Any:
    """A redis-py client without kombu's key prefixing (it prefixes only some commands), on the channel's pool."""
    import redis

    return redis.Redis(connection_pool=channel.client.connection_pool)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _task_id(payload: bytes | None) -> str | None:
    if not payload:
        return None
    try:
        message = json.loads(payload)[0]
        task_id = message["headers"]["id"]
    except (ValueError, LookupError, TypeError):
        return None
    return task_id if isinstance(task_id, str) else None
