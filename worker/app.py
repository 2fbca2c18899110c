"""The Celery application: ``celery -A worker.app worker``."""

from __future__ import annotations

import sys

from celery import Celery
from celery.signals import worker_process_init

from config import ConfigError, Settings
from worker import logging_context, tenant  # noqa: F401 - connects the logging and propagation signals
from worker.celeryconfig import build_celery_config, redis_endpoints
from worker.health.bootsteps import install_health_checks
from worker.redis_tls import warn_if_unverified
from worker.settings import get_settings
from worker.tenant import lifecycle, propagation  # noqa: F401 - task_prerun/postrun and before_task_publish handlers


def _cooperative_postgres_under_gevent() -> None:
    """Celery's gevent pool monkey-patches sockets before the app loads, but psycopg2 talks to PostgreSQL
    from C and would block every greenlet of the process; psycogreen's wait callback yields instead."""
    if "gevent.monkey" not in sys.modules:
        return
    from gevent import monkey

    if monkey.is_module_patched("socket"):
        from psycogreen.gevent import patch_psycopg

        patch_psycopg()


def create_app(settings: Settings | None = None, main: str = "worker") -> Celery:
    """Build a configured app; tests and producers may pass their own settings."""
    settings = settings or get_settings()
    app = Celery(main)
    endpoints = redis_endpoints(settings)
    app.conf.update(build_celery_config(settings, endpoints))
    from worker.message_guard import install_message_guard  # malformed messages: docs/reliability.md
    install_message_guard(app)
    # On the app object, not in app.conf: `celery inspect conf`, `celery report` and Flower show app.conf.
    app.worker_settings = settings
    warn_if_unverified(endpoints)
    app.autodiscover_tasks(["worker"], force=True)
    install_health_checks(app)
    return app


@worker_process_init.connect(weak=False, dispatch_uid="worker.app.dispose_engines")
def _dispose_engines_in_child(**_: object) -> None:
    # Forked pool children must not share the parent's database sockets.
    from worker.db.engine import dispose_engines_after_fork

    dispose_engines_after_fork()


def _create_default_app() -> Celery:
    try:
        return create_app()
    except ConfigError as exc:
        # `celery -A worker.app ...` would otherwise print an import traceback; one line and EX_USAGE instead.
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(64) from None


_cooperative_postgres_under_gevent()
app = _create_default_app()
