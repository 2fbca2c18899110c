"""Enqueue a task for a user: the tenant travels in the message headers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from celery import Task
from celery.result import AsyncResult

from worker.tenant.context import Tenant


class TenantUser(Protocol):
    id: Any
    organization_id: Any


def task_launcher(task: Task, *args: Any, current_user: TenantUser | None = None,
                  launch_options: Mapping[str, Any] | None = None, **kwargs: Any) -> AsyncResult:
    """``task.apply_async`` with the user's organization and id as headers (validated as UUIDs).

    Without ``current_user`` the tenant comes from the current context (a running task, or
    ``worker.tenant.tenant_scope`` in a web request). ``launch_options`` are further ``apply_async`` options
    (``task_id``, ``countdown``, ...); the tenant headers are always the user's.
    """
    options = dict(launch_options or {})
    headers = dict(options.pop("headers", None) or {})
    if current_user is not None:
        headers.update(Tenant.of(current_user.organization_id, current_user.id).headers())
    return task.apply_async(args=args, kwargs=kwargs, headers=headers, **options)
