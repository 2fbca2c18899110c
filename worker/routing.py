"""Which queue a task goes to. Task names are a wire contract with existing producers."""

from __future__ import annotations

EXECUTION_QUEUE = "execution"
DEFAULT_QUEUE = "celery"
EXECUTION_TASKS = frozenset({"rhesis.backend.tasks.execute_test_configuration"})
# Per-test execution tasks live under this namespace, so new ones route without a config change.
EXECUTION_PREFIX = "rhesis.backend.tasks.execution."


# Sent by the API, not by the execution: on the default queue, so that cancelling does not wait behind the
# lanes that fill the `execution` queue.
CONTROL_TASKS = frozenset({"rhesis.backend.tasks.execution.cancel_test_run"})


def queue_for(task_name: str) -> str:
    if task_name in CONTROL_TASKS:
        return DEFAULT_QUEUE
    if task_name in EXECUTION_TASKS or task_name.startswith(EXECUTION_PREFIX):
        return EXECUTION_QUEUE
    return DEFAULT_QUEUE


def route_task(name: str, args, kwargs, options, task=None, **kw) -> dict:  # type: ignore[no-untyped-def]
    """Celery router (``task_routes``); an explicit ``queue=`` given by the producer still wins."""
    return {"queue": queue_for(name)}
