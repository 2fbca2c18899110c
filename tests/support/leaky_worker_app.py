"""Test-only worker app that deliberately logs the environment variable named by LEAK_PRINT once it is ready.

Used by tests/test_secret_watch.py to prove that the session-wide leak check fails a run whose worker log holds a
secret. Never used by the real suite's workers.
"""

from __future__ import annotations

import logging
import os

from celery.signals import worker_ready

from tests.support.worker_app import app


@worker_ready.connect
def _leak(**_: object) -> None:
    name = os.environ.get("LEAK_PRINT", "")
    if name:
        logging.getLogger(__name__).warning("deliberate leak for the leak check: %s", os.environ[name])


__all__ = ["app"]
