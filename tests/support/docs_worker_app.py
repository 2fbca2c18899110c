"""The product app plus a probe that returns exactly the arguments it was called with (docs and Flower tests)."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from tests.support.worker_app import app
from worker.base_task import BaseTask
from worker.tenant.context import current_tenant

__all__ = ["app", "arguments"]


@shared_task(bind=True, base=BaseTask, name="tests.docs.arguments")
def arguments(self: BaseTask, *args: Any, **kwargs: Any) -> dict[str, Any]:
    tenant = current_tenant()
    return {"args": list(args), "kwargs": kwargs, "organization_id": tenant.organization_id,
            "user_id": tenant.user_id}
