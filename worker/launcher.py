"""Enqueue a task for a user: the tenant travels in the message headers."""

from __future__ import annotations

from typing import Any, Protocol

from celery import Task
from celery.result import AsyncResult

from worker.tenant.context import Tenant


class TenantUser(Protocol):
    id: Any
    organization_id: Any


def task_launcher(task: Task, *args: Any, current_user: TenantUser | None = None, **kwargs: Any) -> AsyncResult:
    """``task.apply_async`` with the user's organization and id as headers (validated as UUIDs).

    Without ``current_user`` the tenant comes from the current context (a running task, or
    ``worker.tenant.tenant_scope`` in a web request).
    """
    headers = Tenant.of(current_user.organization_id, current_user.id).headers() if current_user is not None else {}
    return task.apply_async(args=args, kwargs=kwargs, headers=headers)
