"""Carry the tenant in message headers across every way a task can be (re)published.

Celery keeps custom headers on retries, countdowns, groups and chords, but drops them on chain steps
after the first, link/link_error callbacks, ``self.replace`` and tasks sent from inside a task. One
``before_task_publish`` handler fills the tenant of such messages from the publishing task.
"""

from __future__ import annotations

from typing import Any

from celery import current_app
from celery.signals import before_task_publish

from worker.tenant.context import Tenant, current_tenant

ORGANIZATION_HEADER = "organization_id"
USER_HEADER = "user_id"
TENANT_HEADERS = (ORGANIZATION_HEADER, USER_HEADER)


def tenant_of_running_task() -> Tenant:
    """The tenant of the task this thread is executing (ContextVar first, then the request headers)."""
    tenant = current_tenant()
    if tenant.is_set:
        return tenant
    task = current_app.current_worker_task
    if task is None:
        return tenant
    request = task.request
    return Tenant(getattr(request, ORGANIZATION_HEADER, None), getattr(request, USER_HEADER, None))


def fill_tenant_headers(headers: dict[str, Any]) -> None:
    """Give an outgoing message its publisher's tenant unless it names one itself."""
    if headers.get(ORGANIZATION_HEADER):
        return
    tenant = tenant_of_running_task()
    if tenant.is_set:
        headers[ORGANIZATION_HEADER] = tenant.organization_id
        headers[USER_HEADER] = tenant.user_id


@before_task_publish.connect(weak=False, dispatch_uid="worker.tenant.propagation")
def _on_before_task_publish(sender: str | None = None, headers: dict | None = None, **_: Any) -> None:
    if headers is not None:
        fill_tenant_headers(headers)
