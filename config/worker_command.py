"""The `celery worker` command line built from the validated CELERY_WORKER_* settings (and ENABLE_FLOWER)."""

from __future__ import annotations

import shlex

from config.settings import Settings
from config.spec import ConfigError, clip

WORKER_OPTIONS = (
    "CELERY_WORKER_CONCURRENCY", "CELERY_WORKER_PREFETCH_MULTIPLIER", "CELERY_WORKER_MAX_TASKS_PER_CHILD",
    "CELERY_WORKER_MAX_MEMORY_PER_CHILD", "CELERY_WORKER_LOGLEVEL", "CELERY_WORKER_QUEUES", "CELERY_WORKER_POOL",
    "CELERY_WORKER_HOSTNAME", "CELERY_WORKER_MINGLE", "CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT", "CELERY_WORKER_OPTS",
    "ENABLE_FLOWER",
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
        extra = shlex.split(settings.celery_worker_opts)
    except ValueError as exc:
        raise ConfigError(f"CELERY_WORKER_OPTS cannot be split like a shell line ({exc}); "
                          "allowed: options with balanced quotes") from None
    if extra:
        check_worker_options(extra)
    if not settings.celery_worker_mingle and "--without-mingle" not in extra:
        # Mingle waits about 1 s at every start for the other workers' revoked ids and clocks (bench/README.md).
        # Deployments that set the flag in CELERY_WORKER_OPTS before this option existed keep one copy of it.
        argv.append("--without-mingle")
    return argv + extra


def check_worker_options(args: list[str]) -> None:
    """Parse ``celery worker`` options as celery's own command line will, so that a bad CELERY_WORKER_OPTS ends the
    launcher with one line instead of celery's usage text (or its traceback, for a stray positional argument)."""
    from types import SimpleNamespace

    import click
    from celery import Celery
    from celery.bin.worker import worker

    # The options' callbacks read defaults from ctx.obj.app.conf; a bare app has Celery's defaults.
    context = SimpleNamespace(app=Celery("check-worker-options", set_as_current=False))
    try:
        parsed = worker.make_context("worker", list(args), obj=context)
    except click.ClickException as exc:
        problem = " ".join(exc.format_message().split()).rstrip(".")
        raise ConfigError(f"CELERY_WORKER_OPTS is refused by celery worker: {problem}; "
                          "allowed: options of `celery worker --help`") from None
    # celery takes the rest as `name=value` settings and fails with a traceback on anything else.
    stray = [arg for arg in parsed.args if "=" not in arg]
    if stray:
        raise ConfigError(f"CELERY_WORKER_OPTS has an argument that is not an option: {clip(stray[0])}; "
                          "allowed: options of `celery worker --help`")
