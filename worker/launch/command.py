"""The ``celery worker`` command the launcher execs, with ``CELERY_WORKER_MAX_MEMORY_PER_CHILD=auto`` resolved."""

from __future__ import annotations

import dataclasses
import logging
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from config import Settings, mask_url
from config.options import BY_NAME
from config.worker_command import worker_argv
from worker.launch.memory import CGROUP_LIMIT_FILES, auto_max_memory_per_child, memory_limit_bytes

log = logging.getLogger("entrypoint")

MAX_MEMORY = "CELERY_WORKER_MAX_MEMORY_PER_CHILD"


@dataclass(frozen=True)
class WorkerLaunch:
    argv: list[str]
    # Variables to set in the worker's environment: celery reads CELERY_WORKER_* variables as options too, so
    # `auto` must not reach it.
    env: dict[str, str] = field(default_factory=dict)


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
    return WorkerLaunch(worker_argv(resolved), {MAX_MEMORY: str(kib)})


def shown_command(argv: list[str]) -> str:
    """The argv as a shell line, any URL in it masked."""
    return " ".join(shlex.quote(mask_url(word) if "://" in word else word) for word in argv)
