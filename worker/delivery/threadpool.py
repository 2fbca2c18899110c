"""The requests queued in Celery's threads pool, which Celery forgets when the broker connection drops.

On a connection loss the consumer clears its reserved requests ("the broker redelivers them"): prefork drops them
with its outgoing buffer too, but the threads pool's ``flush`` does nothing, so its executor still runs every
request handed to it. Such a request is in no Celery list any more until a thread starts it, and the recovery
would give its message to another worker meanwhile: the task would run twice. This module remembers every request
submitted to the executor until its future is done, so that the holdings keep listing it.
"""

from __future__ import annotations

import threading
import weakref
from concurrent.futures import Future
from typing import Any

_MARK = "_delivery_pending_requests"
_TRACKED: weakref.WeakSet[PendingRequests] = weakref.WeakSet()  # every tracked pool of this process


class PendingRequests:
    """Requests submitted to one thread pool's executor whose futures are not done (queued or running)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[Future[Any], Any] = {}

    def add(self, future: Future[Any], request: Any) -> None:
        with self._lock:
            self._pending[future] = request
        future.add_done_callback(self._discard)  # runs at once if the future is already done

    def _discard(self, future: Future[Any]) -> None:
        with self._lock:
            self._pending.pop(future, None)

    def requests(self) -> list[Any]:
        with self._lock:
            return list(self._pending.values())

    def cancel_queued(self) -> list[Any]:
        """Cancel every future no thread has started yet; their requests, oldest first."""
        with self._lock:
            pending = list(self._pending.items())
        # Outside the lock: a cancelled future runs its done callback (_discard) at once.
        return [request for future, request in pending if future.cancel()]


def track_thread_pool(pool: Any) -> PendingRequests | None:
    """Start tracking the requests of Celery's threads ``pool`` (idempotent); None for any other pool."""
    from celery.concurrency.thread import TaskPool

    if not isinstance(pool, TaskPool):
        return None
    tracked = getattr(pool, _MARK, None)
    if tracked is not None:
        return tracked
    tracked = PendingRequests()
    _TRACKED.add(tracked)
    on_apply = pool.on_apply

    def tracking_on_apply(*args: Any, **kwargs: Any) -> Any:
        result = on_apply(*args, **kwargs)
        # Request.execute_using_pool passes its bound on_success as the callback: that is the request.
        request = getattr(kwargs.get("callback"), "__self__", None)
        future = getattr(result, "f", None)
        if request is not None and isinstance(future, Future):
            tracked.add(future, request)
        return result

    pool.on_apply = tracking_on_apply
    setattr(pool, _MARK, tracked)
    return tracked


def cancel_queued_thread_requests(pool: Any) -> list[Any]:
    """Take back the requests queued in ``pool``'s executor that no thread started (a tracked threads pool only):
    they will never run here; the caller hands their messages back."""
    tracked = getattr(pool, _MARK, None)
    return tracked.cancel_queued() if isinstance(tracked, PendingRequests) else []


def pending_thread_requests(pool: Any) -> list[Any]:
    """The requests queued or running in ``pool`` if it is a tracked threads pool, else []."""
    tracked = getattr(pool, _MARK, None)
    return tracked.requests() if isinstance(tracked, PendingRequests) else []


def pending_requests_of_every_pool() -> list[Any]:
    """The requests queued or running in every tracked threads pool of this process."""
    return [request for tracked in list(_TRACKED) for request in tracked.requests()]
