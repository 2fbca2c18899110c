"""The holdings list the requests queued in Celery's threads pool, which Celery forgets at a reconnect.

Real ``celery.concurrency.thread.TaskPool`` executors; the requests are stand-ins carrying only what the holdings
read (``message.delivery_tag``) and the bound ``on_success`` Celery passes as the pool callback.
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.concurrency.thread import TaskPool as ThreadPool

from worker.delivery.holdings import held_delivery_tags
from worker.delivery.threadpool import pending_thread_requests, track_thread_pool

pytestmark = pytest.mark.timeout(30)


class Request:
    def __init__(self, tag: str) -> None:
        self.message = SimpleNamespace(delivery_tag=tag)
        self.finished = threading.Event()

    def on_success(self, result: Any) -> None:
        self.finished.set()


def test_requests_queued_in_the_threads_pool_stay_held_until_they_ran() -> None:
    pool = ThreadPool(limit=1)
    pool.start()
    release = threading.Event()
    try:
        assert track_thread_pool(pool) is track_thread_pool(pool)  # idempotent
        running, queued = Request("tag-running"), Request("tag-queued")
        pool.apply_async(release.wait, args=(10,), callback=running.on_success)
        pool.apply_async(time.sleep, args=(0,), callback=queued.on_success)
        # What a reconnect leaves: Celery's reserved and active requests no longer list them.
        consumer = SimpleNamespace(pool=pool, task_consumer=None)
        assert held_delivery_tags(consumer) == {"tag-running", "tag-queued"}
        release.set()
        assert running.finished.wait(5) and queued.finished.wait(5)
        deadline = time.monotonic() + 5
        while pending_thread_requests(pool) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert held_delivery_tags(consumer) == set()
    finally:
        release.set()
        pool.stop()


def test_only_the_threads_pool_is_tracked() -> None:
    pool = PreforkPool(limit=1)  # not started: only its type matters
    assert track_thread_pool(pool) is None
    assert pending_thread_requests(pool) == []
    assert track_thread_pool(None) is None


def test_queued_requests_are_cancelled_for_the_hand_back_and_running_ones_are_not() -> None:
    from worker.delivery.threadpool import cancel_queued_thread_requests

    pool = ThreadPool(limit=1)
    pool.start()
    started, release = threading.Event(), threading.Event()

    def hold() -> None:
        started.set()
        release.wait(10)

    try:
        track_thread_pool(pool)
        running, queued = Request("tag-running"), Request("tag-queued")
        pool.apply_async(hold, callback=running.on_success)
        pool.apply_async(time.sleep, args=(0,), callback=queued.on_success)
        assert started.wait(5)
        assert cancel_queued_thread_requests(pool) == [queued]
        assert held_delivery_tags(SimpleNamespace(pool=pool, task_consumer=None)) == {"tag-running"}
        release.set()
        assert running.finished.wait(5)
        time.sleep(0.2)
        assert not queued.finished.is_set()  # never runs here: its message goes back to the queue
    finally:
        release.set()
        pool.stop()
    assert cancel_queued_thread_requests(PreforkPool(limit=1)) == []
