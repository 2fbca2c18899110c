"""The `celery worker` command line built from the validated CELERY_WORKER_* settings (and ENABLE_FLOWER)."""

from __future__ import annotations

import shlex

from config.settings import Settings
from config.spec import ConfigError

WORKER_OPTIONS = (
    "CELERY_WORKER_CONCURRENCY", "CELERY_WORKER_PREFETCH_MULTIPLIER", "CELERY_WORKER_MAX_TASKS_PER_CHILD",
    "CELERY_WORKER_MAX_MEMORY_PER_CHILD", "CELERY_WORKER_LOGLEVEL", "CELERY_WORKER_QUEUES", "CELERY_WORKER_POOL",
    "CELERY_WORKER_HOSTNAME", "CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT", "CELERY_WORKER_OPTS", "ENABLE_FLOWER",
)


def worker_argv(settings: Settings) -> list[str]:
    """argv for `celery -A worker.app worker ...`; CELERY_WORKER_OPTS is split like a POSIX shell would."""
    argv = [
        "celery", "-A", "worker.app", "worker",
        "--pool", settings.celery_worker_pool,
        "--concurrency", str(settings.celery_worker_concurrency),
        "--prefetch-multiplier", str(settings.celery_worker_prefetch_multiplier),
        "--loglevel", settings.celery_worker_loglevel,
        "--queues", ",".join(settings.celery_worker_queues),
    ]
    if settings.celery_worker_max_tasks_per_child:
        argv += ["--max-tasks-per-child", str(settings.celery_worker_max_tasks_per_child)]
    if settings.celery_worker_max_memory_per_child:
        argv += ["--max-memory-per-child", str(settings.celery_worker_max_memory_per_child)]
    if settings.celery_worker_hostname:
        argv += ["--hostname", settings.celery_worker_hostname]
    if settings.enable_flower:
        # Flower beside the worker: task events from the start, or the tasks run before Flower's first
        # enable_events broadcast (every few seconds) never show up in it. Costs throughput (see NOTES §3).
        argv.append("--task-events")
    try:
        argv += shlex.split(settings.celery_worker_opts)
    except ValueError as exc:
        raise ConfigError(f"CELERY_WORKER_OPTS cannot be split like a shell line ({exc}); "
                          "allowed: options with balanced quotes") from None
    return argv
