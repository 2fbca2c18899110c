"""The Celery application: ``celery -A worker.app worker``."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from celery import Celery
from celery.signals import worker_init, worker_process_init

from config import ConfigError, Settings
from worker import logging_context, observability, prefork, tenant  # noqa: F401 - connect signal handlers
from worker.celeryconfig import build_celery_config, redis_endpoints
from worker.health.bootsteps import install_health_checks
from worker.ops import control as _ops_control  # noqa: F401 - the tenant_tasks inspection (python -m worker inspect)
from worker.redis_tls import warn_if_unverified
from worker.settings import APP_SCOPE, get_settings
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


# Celery reads these two variables from the environment ahead of its configuration (celery/app/utils.py), so the
# raw URL, with whatever `ssl_cert_reqs` its query carries, would win over the validated one and its TLS options.
_CELERY_ENVIRONMENT_URLS = {"CELERY_BROKER_URL": "broker", "CELERY_RESULT_BACKEND": "result backend"}


def _align_celery_environment(endpoints: dict) -> None:
    """Make the variables Celery reads itself say what the validated configuration says (never adds one)."""
    for name, endpoint in _CELERY_ENVIRONMENT_URLS.items():
        if name in os.environ:
            os.environ[name] = endpoints[endpoint].url


def create_app(settings: Settings | None = None, main: str = "worker") -> Celery:
    """Build a configured app; a client of other servers (tests, bench) may pass settings loaded for them.

    Only the app scope is validated here: producers import this module, worker-only variables are the launcher's.
    """
    settings = settings or get_settings(APP_SCOPE)
    app = Celery(main)
    endpoints = redis_endpoints(settings)
    app.conf.update(build_celery_config(settings, endpoints))
    _align_celery_environment(endpoints)
    from worker.message_guard import install_message_guard  # malformed messages: docs/reliability.md
    install_message_guard(app, settings.tenant_signing_key)  # signed tenants: docs/tenancy.md
    warn_if_unverified(endpoints)
    app.autodiscover_tasks(["worker"], force=True)
    install_health_checks(app)
    from worker.execution.bootsteps import install_execution  # stalled runs: docs/execution.md
    install_execution(app, settings.execution_sweep_interval)
    return app


@worker_process_init.connect(weak=False, dispatch_uid="worker.app.dispose_engines")
def _dispose_engines_in_child(**_: object) -> None:
    # Forked pool children must not share the parent's database sockets.
    from worker.db.engine import dispose_engines_after_fork

    dispose_engines_after_fork()


def _exit_on_config_error(build: Callable[[], object]) -> object:
    try:
        return build()
    except ConfigError as exc:
        # `celery -A worker.app ...` would otherwise print a traceback; one line and EX_USAGE instead.
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(64) from None


@worker_init.connect(weak=False, dispatch_uid="worker.app.validate_every_setting")
def _validate_every_setting(**_: object) -> None:
    # A worker process also reads the worker, health and flower scopes, which importing this module does not
    # validate (producers import it). Its launcher normally checked them; a bare `celery worker` is checked here.
    _exit_on_config_error(get_settings)


def _create_default_app() -> Celery:
    return _exit_on_config_error(create_app)  # type: ignore[return-value]


_cooperative_postgres_under_gevent()
app = _create_default_app()
