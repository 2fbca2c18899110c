"""Hand waiting messages back to their queues as soon as a warm shutdown begins.

kombu's Redis transport restores a channel's unacknowledged messages only when the channel closes, which a warm
shutdown does at the very end, after the running tasks finished. A task waiting in this worker for its ETA or
countdown would wait that long too, although another worker could run it. When the consumer stops (the first
thing a warm shutdown does, before it waits for the pool), this step cancels the task consumer, so nothing new is
fetched, and puts every request still waiting in the timer back at the head of its queue (kombu's
``reject(requeue=True)``: restored and removed from the unacknowledged hash in one Redis transaction). So does it
with the requests queued in the threads pool's executor that no thread started yet (a prefetch multiplier above 1
queues them there; the executor would run them all before the worker exits). Requests that a pool process or
thread started are left alone: they run to the end and are acknowledged as usual. (Requests the prefork pool holds
in its outgoing buffer are not reachable here; kombu restores them at the exit, as before.)

A BRPOP still in flight when the consumer is cancelled would take the next message pushed to the queue, one
just handed back included, and the event loop reads it only at the exit: its reply is read first (see
``_finish_pending_fetch``).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps
from celery.worker import state as worker_state

from worker.delivery.threadpool import cancel_queued_thread_requests

log = logging.getLogger("worker.delivery")


def _waiting_entries(consumer: Any) -> list[tuple[Any, Any]]:
    """(timer entry, request) of every task waiting in the consumer's timer for its ETA/countdown."""
    waiting_functions = (consumer.apply_eta_task, consumer._limit_post_eta)
    found = []
    for scheduled in consumer.timer.queue:
        entry = getattr(scheduled, "entry", scheduled)
        if entry.canceled or entry.fun not in waiting_functions or not entry.args:
            continue
        found.append((entry, entry.args[0]))
    return found


def _finish_pending_fetch(channel: Any) -> None:
    """Read the reply of a BRPOP still pending on the consumer's channel (at most its timeout, 1 s by default).

    The event loop does not read it again before the worker exits, and Redis hands the next message pushed to the
    queue to that BRPOP: a message handed back now would sit, unacknowledged and in no Redis key, in this process's
    socket until the exit. Read here, a message it brought is requeued at once (no consumer for it any more)."""
    if channel is None or not getattr(channel, "_in_poll", None):
        return
    try:
        channel._brpop_read()
    except Exception as exc:  # kombu's Empty (the BRPOP timed out) or a connection error: nothing to deliver
        log.debug("pending fetch at shutdown ended with %r", exc)


def _requeue(request: Any) -> bool:
    message = request.message
    if message.acknowledged:
        return False
    try:
        message.reject(requeue=True)
    except Exception as exc:
        log.warning("could not hand back task %s at shutdown (it returns when the worker exits): %s",
                    request.id, exc)
        return False
    worker_state.reserved_requests.discard(request)
    return True


def hand_back_waiting(consumer: Any) -> int:
    """Stop fetching and requeue the messages of tasks that have not started; how many were handed back."""
    task_consumer = getattr(consumer, "task_consumer", None)
    if task_consumer is not None:
        try:
            task_consumer.cancel()
        except Exception as exc:  # the broker may be away; the messages then come back as before
            log.warning("could not cancel the task consumer at shutdown: %s", exc)
    _finish_pending_fetch(getattr(task_consumer, "channel", None))
    running = {request.id for request in list(worker_state.active_requests)}
    handed = 0
    for entry, request in _waiting_entries(consumer):
        if request.id in running:
            continue
        entry.cancel()  # first, so that the timer cannot start it after it went back to the queue
        handed += _requeue(request)
    if handed:
        log.warning("warm shutdown: handed %d waiting (ETA/countdown) task(s) back to their queues", handed)
    # Cancelled first (a future a thread already started cannot be cancelled and is left to finish).
    queued = sum(map(_requeue, cancel_queued_thread_requests(getattr(consumer, "pool", None))))
    if queued:
        log.warning("warm shutdown: handed %d prefetched task(s) that no thread had started back to their queues",
                    queued)
    return handed + queued


def shutting_down() -> bool:
    """True once the worker began a warm or cold shutdown."""
    # should_stop holds the exit code, 0 (falsy) for a clean warm shutdown; None/False mean "keep running".
    # (0 == False in Python, so compare by identity.)
    return any(flag is not None and flag is not False
               for flag in (worker_state.should_stop, worker_state.should_terminate))


class HandBackOnShutdown(bootsteps.StartStopStep):
    """Consumer step. ``close`` is what a warm shutdown calls first on every consumer step (``WorkController.stop``
    -> ``signal_consumer_close``), before it waits for the running tasks; ``stop`` comes only after that wait."""

    label = "Hand back waiting tasks"
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def close(self, consumer: Any) -> None:
        if not shutting_down():
            return
        try:
            hand_back_waiting(consumer)
        except Exception:  # Celery swallows an AttributeError from close: say what went wrong
            log.exception("could not hand back the waiting tasks at shutdown (they return when the worker exits)")
