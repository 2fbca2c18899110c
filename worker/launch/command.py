"""The ``celery worker`` command the launcher execs, with ``CELERY_WORKER_MAX_MEMORY_PER_CHILD=auto`` resolved."""

from __future__ import annotations

import dataclasses
import logging
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from config import Settings, mask_url
from config.options import BY_NAME, OPTIONS
from config.worker_command import worker_argv
from worker.launch.memory import CGROUP_LIMIT_FILES, auto_max_memory_per_child, memory_limit_bytes

log = logging.getLogger("entrypoint")

MAX_MEMORY = "CELERY_WORKER_MAX_MEMORY_PER_CHILD"

# Celery's command line reads every CELERY_* variable as an option (click auto_envvar_prefix="CELERY"):
# CELERY_WORKER_MAX_TASKS_PER_CHILD=0, our "unlimited", would become --max-tasks-per-child=0 and stop the worker.
# The launcher has turned these (the options only it reads) into argv already, so celery must not see them again.
# CELERY_RESULT_BACKEND and CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT stay: the worker's app reads them, and as celery
# options they are the same URL (--result-backend) or no option of `celery worker` at all.
CELERY_CLI_VARIABLES = tuple(option.name for option in OPTIONS
                             if option.name.startswith("CELERY_") and option.scope == "worker")


def celery_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment to exec celery with: without our CELERY_* options that the argv already carries."""
    return {name: value for name, value in environ.items() if name not in CELERY_CLI_VARIABLES}


@dataclass(frozen=True)
class WorkerLaunch:
    argv: list[str]


def worker_launch(settings: Settings, cgroup_files: tuple[Path, ...] = CGROUP_LIMIT_FILES) -> WorkerLaunch:
    if settings.celery_worker_max_memory_per_child != "auto":
        return WorkerLaunch(worker_argv(settings))
    limit = memory_limit_bytes(cgroup_files)
    kib = auto_max_memory_per_child(limit, settings.celery_worker_concurrency, settings.celery_worker_pool,
                                    BY_NAME[MAX_MEMORY].parser.maximum)
    if not limit:
        log.info("%s=auto: no container memory limit found, so no bound (0)", MAX_MEMORY)
    elif not kib:
        log.info("%s=auto: no bound (0) with the %s pool", MAX_MEMORY, settings.celery_worker_pool)
    else:
        log.info("%s=auto: %d KiB per child (3/4 of the %d-byte memory limit over concurrency %d)", MAX_MEMORY,
                 kib, limit, settings.celery_worker_concurrency)
    resolved = dataclasses.replace(settings, celery_worker_max_memory_per_child=kib)
    return WorkerLaunch(worker_argv(resolved))


def shown_command(argv: list[str]) -> str:
    """The argv as a shell line, any URL in it masked."""
    return " ".join(shlex.quote(mask_url(word) if "://" in word else word) for word in argv)
