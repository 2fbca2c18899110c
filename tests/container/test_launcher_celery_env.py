"""Celery's command line reads every ``CELERY_*`` variable as an option (click ``auto_envvar_prefix``).

Our own ``CELERY_WORKER_*`` settings share that prefix. The launcher turns them into argv, so they must not also
reach ``celery worker`` as options (``CELERY_WORKER_MAX_TASKS_PER_CHILD=0``, documented as unlimited, became
``--max-tasks-per-child=0`` and stopped the worker). Every ``CELERY_*`` option of config/options.py, at its
documented boundary values, must give a worker started through entrypoint.sh that reaches readiness.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from config.options import OPTIONS
from tests.container.conftest import wait_for

# Per option: the values documented as its bounds (and special words), each with anything else it needs.
BOUNDARY_VALUES: dict[str, list[dict[str, str]]] = {
    "CELERY_WORKER_CONCURRENCY": [{"CELERY_WORKER_CONCURRENCY": "1"},
                                  # 1000 processes would not fit this machine; the threads pool starts lazily
                                  {"CELERY_WORKER_CONCURRENCY": "1000", "CELERY_WORKER_POOL": "threads"}],
    "CELERY_WORKER_PREFETCH_MULTIPLIER": [{"CELERY_WORKER_PREFETCH_MULTIPLIER": "1"},
                                          {"CELERY_WORKER_PREFETCH_MULTIPLIER": "1000"}],
    "CELERY_WORKER_MAX_TASKS_PER_CHILD": [{"CELERY_WORKER_MAX_TASKS_PER_CHILD": "0"},
                                          {"CELERY_WORKER_MAX_TASKS_PER_CHILD": "10000000"}],
    "CELERY_WORKER_MAX_MEMORY_PER_CHILD": [{"CELERY_WORKER_MAX_MEMORY_PER_CHILD": "0"},
                                           {"CELERY_WORKER_MAX_MEMORY_PER_CHILD": "1073741824"},
                                           {"CELERY_WORKER_MAX_MEMORY_PER_CHILD": "auto"}],
    "CELERY_WORKER_LOGLEVEL": [{"CELERY_WORKER_LOGLEVEL": "DEBUG"}, {"CELERY_WORKER_LOGLEVEL": "CRITICAL"}],
    "CELERY_WORKER_QUEUES": [{"CELERY_WORKER_QUEUES": "celery"}],
    "CELERY_WORKER_POOL": [{"CELERY_WORKER_POOL": "solo"}],
    "CELERY_WORKER_HOSTNAME": [{"CELERY_WORKER_HOSTNAME": ""}],
    "CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT": [{"CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT": "0"},
                                            {"CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT": "86400"}],
    "CELERY_WORKER_MINGLE": [{"CELERY_WORKER_MINGLE": "yes"}, {"CELERY_WORKER_MINGLE": "no"},
                             # the flag the option also adds: given twice, the worker must still start
                             {"CELERY_WORKER_MINGLE": "no", "CELERY_WORKER_OPTS": "--without-mingle"}],
    "CELERY_WORKER_OPTS": [{"CELERY_WORKER_OPTS": ""}, {"CELERY_WORKER_OPTS": "--without-mingle"}],
    # Every worker of the test suite runs with it (the test's own Redis database).
    "CELERY_RESULT_BACKEND": [{}],
}
CASES = [pytest.param(values, id=f"{name}={values.get(name, 'test-value')!r}")
         for name, cases in BOUNDARY_VALUES.items() for values in cases]


def test_every_celery_option_is_covered() -> None:
    assert {option.name for option in OPTIONS if option.name.startswith("CELERY_")} == set(BOUNDARY_VALUES)


@pytest.mark.parametrize("values", CASES)
def test_worker_reaches_readiness_with_celery_option_at_its_boundary(worker_env, start_entrypoint, values) -> None:
    entry = start_entrypoint({**worker_env, **values})
    ready = Path(worker_env["WORKER_HEALTH_DIR"]) / "ready"

    def is_ready() -> bool:
        if entry.proc.poll() is not None:
            raise AssertionError(f"the worker exited with {entry.proc.returncode}:\n{entry.log()[-3000:]}")
        return ready.exists()

    wait_for(is_ready, 60, 0.3, "the worker's ready marker")
    assert "Error:" not in entry.log()
