"""Carry the tenant in message headers across every way a task can be (re)published.

Celery keeps custom headers on retries, countdowns, groups and chords, but drops them on chain steps
after the first, link/link_error callbacks, ``self.replace`` and tasks sent from inside a task. One
``before_task_publish`` handler fills the tenant of such messages from the publishing task.
"""

from __future__ import annotations

from typing import Any

from celery import current_app
from celery.signals import before_task_publish

from worker.tenant.context import ORGANIZATION_HEADER, TENANT_HEADERS, USER_HEADER, Tenant, current_tenant
from worker.tenant.display import show_tenant_in_kwargsrepr

__all__ = ["ORGANIZATION_HEADER", "TENANT_HEADERS", "USER_HEADER", "fill_tenant_headers", "message_tenant",
           "tenant_of_running_task"]


def tenant_of_running_task() -> Tenant:
    """The tenant of the task this thread is executing (ContextVar first, then the request headers)."""
    tenant = current_tenant()
    if tenant.is_set:
        return tenant
    task = current_app.current_worker_task
    if task is None:
        return tenant
    request = task.request
    return Tenant.of(getattr(request, ORGANIZATION_HEADER, None), getattr(request, USER_HEADER, None))


def message_tenant(headers: dict[str, Any], body: Any) -> tuple[Any, Any]:
    """The (organization_id, user_id) a message names: its headers, else its kwargs; (None, None) for none."""
    if headers.get(ORGANIZATION_HEADER):
        return headers.get(ORGANIZATION_HEADER), headers.get(USER_HEADER)
    # Protocol 2 body: (args, kwargs, embed). A producer that sends the tenant only as kwargs names its own.
    if isinstance(body, list | tuple) and len(body) >= 2 and isinstance(body[1], dict):
        return body[1].get(ORGANIZATION_HEADER), body[1].get(USER_HEADER)
    return None, None


def _names_own_tenant(headers: dict[str, Any], body: Any) -> bool:
    return bool(message_tenant(headers, body)[0])


def fill_tenant_headers(headers: dict[str, Any], body: Any = None) -> None:
    """Give an outgoing message its publisher's tenant unless it names one itself."""
    if _names_own_tenant(headers, body):
        return
    tenant = tenant_of_running_task()
    if tenant.is_set:
        headers.update(tenant.headers())


@before_task_publish.connect(weak=False, dispatch_uid="worker.tenant.propagation")
def _on_before_task_publish(sender: str | None = None, headers: dict | None = None, body: Any = None,
                            **_: Any) -> None:
    if headers is not None:
        fill_tenant_headers(headers, body)
        # Flower shows kwargsrepr, never our headers: put the tenant where operators look (display only).
        show_tenant_in_kwargsrepr(headers, *message_tenant(headers, body))
