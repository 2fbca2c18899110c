"""Start the in-worker sweeper (worker/execution/sweeper.py) with ``celery worker``, and offer the same sweep to
celery beat."""

from __future__ import annotations

from typing import Any

from celery import Celery, bootsteps

from worker.execution.sweeper import SweeperThread

SWEEP_TASK = "rhesis.backend.tasks.execution.sweep"


class ExecutionSweeper(bootsteps.StartStopStep):
    label = "Execution sweeper"
    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.thread: SweeperThread | None = None

    def start(self, worker: Any) -> None:
        from worker.execution.settings import execution_settings

        settings = execution_settings()
        self.thread = SweeperThread(worker.app, settings.sweep_interval, settings.stall_seconds)
        self.thread.start()

    def stop(self, worker: Any) -> None:
        if self.thread is not None:
            self.thread.stop()


def install_execution(app: Celery, sweep_interval: int) -> None:
    if ExecutionSweeper not in app.steps["worker"]:
        app.steps["worker"].add(ExecutionSweeper)
    if sweep_interval > 0:
        app.conf.beat_schedule = {**(app.conf.beat_schedule or {}),
                                  "execution-sweep": {"task": SWEEP_TASK, "schedule": float(sweep_interval)}}
