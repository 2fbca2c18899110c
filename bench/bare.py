"""Bare Celery, the baseline of bench.tenancy: the product's Celery settings on a plain app, nothing else.

The settings come from the product's own builder (worker/celeryconfig.py), so they cannot drift from the product
app's; what is left out is exactly the tenant machinery: no message guard (so kombu's BRPOP fetch instead of the
atomic take, and no header checks), no tenant, logging or metrics signal handlers, no health or execution bootsteps.
Importing this module must not import ``worker.app`` or ``worker.tenant``: signal handlers are process-wide.
"""

from __future__ import annotations

from celery import Celery

from config import Settings
from worker.celeryconfig import build_celery_config

NOOP = "bench.bare_noop"


def _noop() -> None:
    return None


def create_bare_app(settings: Settings, main: str = "bench-bare") -> Celery:
    app = Celery(main, set_as_current=False)
    app.conf.update(build_celery_config(settings))
    app.task(name=NOOP)(_noop)
    return app
