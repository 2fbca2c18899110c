"""``run`` (alias ``worker``) and ``flower``: validate once, log the settings masked, then exec celery.

``celery`` is found on PATH by name. Without Flower the worker replaces this process (tini's only child is then
the Celery main process); with ``ENABLE_FLOWER=yes`` a small supervisor runs both (worker/launch/supervisor.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from config import Settings, load_settings
from worker.cli.settings_commands import shown_settings
from worker.health.files import HealthFiles

EX_USAGE = 64
log = logging.getLogger("entrypoint")


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="entrypoint: %(message)s", stream=sys.stderr)


def _log_settings(settings: Settings) -> None:
    for line in sorted(shown_settings(settings)):
        log.info("setting %s", line)


def _exec(argv: list[str], env: dict[str, str]) -> int:
    from worker.launch.command import shown_command

    log.info("starting: %s", shown_command(argv))
    logging.shutdown()
    os.execvpe(argv[0], argv, env)  # noqa: S606 - our own validated argv; celery found on PATH by name


def run(args: argparse.Namespace) -> int:
    _setup_logging()
    if args.stray:
        print(f"entrypoint: 'worker' takes no arguments (got: {' '.join(args.stray)}); use CELERY_WORKER_OPTS for "
              "extra celery worker options", file=sys.stderr)
        return EX_USAGE
    from worker.launch.command import celery_environment, worker_launch
    from worker.launch.flower import prepare_flower, worker_environment

    settings = load_settings()
    worker = worker_launch(settings)
    flower = prepare_flower(settings, celery_environment(os.environ)) if settings.enable_flower else None
    _log_settings(settings)
    HealthFiles(settings.worker_health_dir).start_role("worker")
    worker_env = celery_environment(worker_environment(os.environ))
    if flower is None:
        return _exec(worker.argv, worker_env)
    from worker.launch.command import shown_command
    from worker.launch.supervisor import Supervisor

    log.info("starting: %s", shown_command(worker.argv))
    return Supervisor(worker.argv, worker_env, flower.argv, flower.env).run()


def flower(_args: argparse.Namespace) -> int:
    _setup_logging()
    from worker.launch.command import celery_environment
    from worker.launch.flower import prepare_flower

    settings = load_settings()
    launch = prepare_flower(settings, celery_environment(os.environ))
    _log_settings(settings)
    HealthFiles(settings.worker_health_dir).start_role("flower")
    return _exec(launch.argv, launch.env)
