"""``tenant_tasks``: a worker's active, reserved and scheduled tasks with their tenant and its pool's kind.

Celery's own ``inspect active/reserved/scheduled`` leave out the message headers, where the tenant travels
(``organization_id``/``user_id``); an on-call engineer needs to know whose task is stuck. Arguments are left out:
they are the tenant's data.
"""

from __future__ import annotations

from typing import Any

from celery.worker import state as worker_state
from celery.worker.control import inspect_command
from celery.worker.request import Request


def _describe(request: Request, eta: str | None = None) -> dict[str, Any]:
    headers = request.request_dict
    return {"id": request.id, "name": request.name, "organization_id": headers.get("organization_id"),
            "user_id": headers.get("user_id"), "time_start": request.time_start, "eta": eta,
            "acknowledged": request.acknowledged, "worker_pid": request.worker_pid}


def pool_kind(pool: Any) -> str:
    """``prefork``, ``threads``, ``gevent``, ``eventlet`` or ``solo`` from the pool's module."""
    module = type(pool).__module__.rsplit(".", 1)[-1]
    return {"thread": "threads", "prefork": "prefork"}.get(module, module)


@inspect_command()
def tenant_tasks(state: Any, **_: Any) -> dict[str, Any]:
    active = state.tset(worker_state.active_requests)
    reserved = state.tset(worker_state.reserved_requests) - active
    scheduled = []
    for waiting in state.consumer.timer.schedule.queue:
        try:
            request = waiting.entry.args[0]
        except (AttributeError, IndexError, TypeError):
            continue
        if isinstance(request, Request):
            scheduled.append(_describe(request, request.eta.isoformat() if request.eta else None))
    return {"pool": pool_kind(state.consumer.pool), "active": [_describe(r) for r in active],
            "reserved": [_describe(r) for r in reserved], "scheduled": scheduled}
