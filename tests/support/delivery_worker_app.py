"""The test worker app plus a task that counts its own completions in Redis, for the delivery fault tests."""

from __future__ import annotations

import time
from functools import cache

import redis
from celery import shared_task

from tests.support.worker_app import app


@cache
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


@shared_task(bind=True, name="tests.delivery.count", max_retries=0)
def count(self, counter_url: str, counter_key: str, seconds: float) -> None:  # type: ignore[no-untyped-def]
    """Sleep, then add one to this task id's field of the counter hash: HLEN = tasks completed, >1 = duplicates.
    Starts are counted the same way in ``<counter_key>:started``."""
    _client(counter_url).hincrby(counter_key + ":started", self.request.id, 1)
    time.sleep(seconds)
    _client(counter_url).hincrby(counter_key, self.request.id, 1)


__all__ = ["app", "count"]
