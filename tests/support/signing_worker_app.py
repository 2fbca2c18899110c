"""The test worker app plus a task whose every run leaves a count in Redis, to prove a rejected body never ran."""

from __future__ import annotations

import os
from typing import Any

import redis
from celery import shared_task

from tests.support.worker_app import app
from worker.base_task import BaseTask
from worker.tenant.context import current_tenant


@shared_task(bind=True, base=BaseTask, name="tests.signing.count_run")
def count_run(self: BaseTask, counter: str) -> dict[str, Any]:
    client = redis.Redis.from_url(os.environ["BROKER_URL"])
    try:
        client.incr(counter)
    finally:
        client.close()
    tenant = current_tenant()
    return {"organization_id": tenant.organization_id, "user_id": tenant.user_id}


__all__ = ["app", "count_run"]
