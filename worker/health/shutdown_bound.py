"""Bound a warm shutdown: tasks still running after CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT are stopped (cold)."""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

log = logging.getLogger("worker.health")

EX_SHUTDOWN_CUT = 1


def bound_warm_shutdown(worker: Any, timeout: float) -> threading.Timer:
    """Called when Celery's warm shutdown begins: after ``timeout`` seconds the worker sends itself SIGQUIT."""
    timer = threading.Timer(timeout, _cold_shutdown, args=(worker, timeout))
    timer.name = "shutdown-bound"
    timer.daemon = True  # a worker that finished in time exits without waiting for the timer
    timer.start()
    return timer


def _cold_shutdown(worker: Any, timeout: float) -> None:
    log.warning("tasks still running %gs after the warm shutdown began (CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT): "
                "cold shutdown, the running tasks are stopped", timeout)
    # The bound was already granted during the warm shutdown: no second soft-shutdown wait.
    worker.app.conf.worker_soft_shutdown_timeout = 0.0
    worker.app.conf.worker_enable_soft_shutdown_on_idle = False
    # Tasks were cut short: the process must not report a clean exit.
    worker.exitcode = EX_SHUTDOWN_CUT
    os.kill(os.getpid(), signal.SIGQUIT)
