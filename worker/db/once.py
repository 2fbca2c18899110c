"""Exactly-once database effects for at-least-once delivery (docs/reliability.md, "Exactly-once effects").

A task may run twice: its worker died after the effect committed but before the acknowledgement, or the same
message was published twice. ``run_once`` claims the task id in ``task_effect`` inside the transaction that
writes the effect; the claim and the effect commit together or roll back together, so exactly one delivery's
effect survives. A second delivery running at the same moment waits on the first one's row lock and then finds
the marker (or takes over the claim, when the first rolled back).
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from worker.db.session import session_tenant
from worker.errors import TenantContextError

log = logging.getLogger("worker.db.once")

# The organization comes from the sealed tenant of this transaction, exactly what the policy checks.
_CLAIM = text("INSERT INTO task_effect (organization_id, task_id) "
              "VALUES ((select tenant_guard.current_organization()), :task_id) "
              "ON CONFLICT (organization_id, task_id) DO NOTHING RETURNING task_id")


def run_once(session: Session, task_id: str) -> bool:
    """Claim ``task_id`` for the session's tenant in the session's current transaction.

    True: this is the first delivery, apply the effect in the same transaction. False: an earlier delivery's
    effect is committed, skip it. Raises TenantContextError for a session without a tenant or an empty task id.
    """
    if session_tenant(session) is None:
        raise TenantContextError("run_once needs a tenant session (worker.db.session.tenant_session)")
    if not isinstance(task_id, str) or not task_id:
        raise TenantContextError(f"run_once needs the task id of a delivered message, got {task_id!r}")
    return session.execute(_CLAIM, {"task_id": task_id}).first() is not None


def once_per_task(func: Callable[..., Any]) -> Callable[..., Any]:
    """For a task wrapped in ``with_tenant_context`` (put this decorator below it): run the body only for the
    first delivery of the message; a repeated delivery returns None without touching the database."""

    @functools.wraps(func)
    def wrapper(self: Any, *args: Any, db: Session, **kwargs: Any) -> Any:
        task_id = self.request.id
        if not run_once(db, task_id):
            log.warning("task %s[%s] was delivered again after its effect committed: effect skipped",
                        self.name, task_id)
            return None
        return func(self, *args, db=db, **kwargs)

    wrapper.__signature__ = inspect.signature(func)  # type: ignore[attr-defined]
    return wrapper
