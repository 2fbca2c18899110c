"""The test worker app plus a task that counts its own completions in Redis, for the delivery fault tests."""

from __future__ import annotations

import time
import uuid
from functools import cache

import redis
from celery import shared_task

from tests.support.worker_app import app
from worker.base_task import BaseTask
from worker.db.models import TestSet
from worker.db.once import run_once
from worker.tenant.context import current_tenant


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


@shared_task(bind=True, base=BaseTask, name="tests.delivery.write_then_linger", max_retries=0)
def write_then_linger(self: BaseTask, name: str, counter_url: str, counter_key: str, seconds: float) -> bool:
    """Create test set ``name`` once per message (``run_once``), commit, then count the start in Redis and
    linger ``seconds`` when the effect was applied: the window in which a test kills the process before the ack."""
    with self.get_db_session() as db:
        applied = run_once(db, self.request.id)
        if applied:
            db.add(TestSet(organization_id=uuid.UUID(current_tenant().organization_id), name=name))
    _client(counter_url).hincrby(counter_key, "applied" if applied else "skipped", 1)
    if applied:
        time.sleep(seconds)
    return applied


__all__ = ["app", "count", "write_then_linger"]
