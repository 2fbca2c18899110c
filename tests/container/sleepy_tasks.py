"""Tasks that take a while, for the shutdown and drain tests (loaded with ``--include`` through CELERY_WORKER_OPTS).

They need neither a tenant nor the database, so they run on any worker of the product app.
"""

from __future__ import annotations

import time
from pathlib import Path

from celery import shared_task


@shared_task(name="tests.container.sleep")
def sleep(seconds: float, started_marker: str | None = None) -> str:
    if started_marker:
        Path(started_marker).write_text("started")
    time.sleep(seconds)
    return f"slept {seconds}"
