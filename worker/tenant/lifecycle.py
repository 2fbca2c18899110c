"""Tenant state around every task execution, whatever the task class and whatever the outcome.

``task_prerun`` and ``task_postrun`` fire for every task Celery traces and for every state (success, failure,
retry, ignore/replace, reject), unlike ``Task.after_return``, which Celery skips for retries and replaces. So:

- before a worker task starts, the tenant is reset to "none" (BaseTask.before_start then sets the message's);
- after it ends, the tenant is reset to "none" again, so nothing leaks into the next task on this
  process, thread or greenlet;
- an eager task (``.apply()``, ``task_always_eager``) runs inside its caller: it inherits the caller's tenant
  and hands it back untouched afterwards.

The run time and outcome of every BaseTask are logged here too, so that a task that fails in before_start
(conflicting or invalid tenant) is still measured.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery.signals import task_postrun, task_prerun

from worker.tenant.context import NO_TENANT, current_tenant, set_current_tenant

log = logging.getLogger("worker.task")

_SAVED = "tenant_before_task"
_STARTED = "tenant_task_started"


@task_prerun.connect(weak=False, dispatch_uid="worker.tenant.lifecycle.prerun")
def _before_task(task: Any = None, **_: Any) -> None:
    request = task.request
    setattr(request, _STARTED, time.perf_counter())
    if getattr(request, "is_eager", False):
        setattr(request, _SAVED, current_tenant())
    else:
        set_current_tenant(NO_TENANT)


@task_postrun.connect(weak=False, dispatch_uid="worker.tenant.lifecycle.postrun")
def _after_task(task: Any = None, state: str | None = None, **_: Any) -> None:
    request = task.request
    started = getattr(request, _STARTED, None)
    if started is not None and getattr(task, "log_outcome", False):
        log.info("task %s finished: outcome=%s runtime=%.3fs", task.name, (state or "unknown").lower(),
                 time.perf_counter() - started)
    set_current_tenant(getattr(request, _SAVED, NO_TENANT) if getattr(request, "is_eager", False) else NO_TENANT)
