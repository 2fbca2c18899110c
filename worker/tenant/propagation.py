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

# Marks a chord body whose tenant was fixed at publish time (possibly "none"); removed when the body is published.
CHORD_BODY_PINNED = "tenant_pinned"

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


def _embedded_chord_body(body: Any) -> dict[str, Any] | None:
    """The chord body signature a chord header message carries in its embedded options, if any."""
    if isinstance(body, list | tuple) and len(body) >= 3 and isinstance(body[2], dict):
        chord_body = body[2].get("chord")
        if isinstance(chord_body, dict):
            return chord_body
    return None


def _is_chord_body_of_running_task(headers: dict[str, Any]) -> bool:
    """Whether this message is the body of the chord whose header task is running (published by its last member)."""
    task = current_app.current_worker_task
    chord_body = getattr(task.request, "chord", None) if task is not None else None
    if not isinstance(chord_body, dict):
        return False
    return bool(headers.get("id")) and (chord_body.get("options") or {}).get("task_id") == headers.get("id")


def _pin_chord_body_tenant(headers: dict[str, Any], body: Any, publisher: Tenant) -> None:
    """Fix a chord body's tenant when the chord is published: the publisher's, whatever its header tasks name.

    Without this the body, published by whichever header task finishes last, would inherit that task's tenant.
    """
    chord_body = _embedded_chord_body(body)
    if chord_body is None:
        return
    task = current_app.current_worker_task
    if task is not None and task.request.id == headers.get("id"):
        return  # a header task republishing itself (retry): the body keeps what the chord's publisher fixed
    options = chord_body.setdefault("options", {})
    body_headers = options.get("headers")
    if isinstance(body_headers, dict) and body_headers.get(ORGANIZATION_HEADER):
        return  # the chord's publisher named the body's tenant itself
    options["headers"] = {**(body_headers if isinstance(body_headers, dict) else {}), **publisher.headers(),
                          CHORD_BODY_PINNED: True}


def fill_tenant_headers(headers: dict[str, Any], body: Any = None) -> None:
    """Give an outgoing message its publisher's tenant unless it names one itself."""
    if headers.pop(CHORD_BODY_PINNED, None) or _is_chord_body_of_running_task(headers):
        return  # a chord body runs as the tenant fixed when the chord was published, never as its last member's
    publisher = tenant_of_running_task()
    _pin_chord_body_tenant(headers, body, publisher)
    if _names_own_tenant(headers, body):
        return
    if publisher.is_set:
        headers.update(publisher.headers())


@before_task_publish.connect(weak=False, dispatch_uid="worker.tenant.propagation")
def _on_before_task_publish(sender: str | None = None, headers: dict | None = None, body: Any = None,
                            **_: Any) -> None:
    if headers is not None:
        fill_tenant_headers(headers, body)
        # Flower shows kwargsrepr, never our headers: put the tenant where operators look (display only).
        show_tenant_in_kwargsrepr(headers, *message_tenant(headers, body))
