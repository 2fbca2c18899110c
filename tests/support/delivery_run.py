"""Exact effect counts for the delivery fault tests: workers running ``tests.delivery.count`` and its counter hash.

Each completion adds one to the task id's field of a Redis hash (tests/support/delivery_worker_app.py): HLEN is the
number of tasks completed, a value above 1 a duplicate. The hash lives on ``counter_url``, which defaults to the
workers' broker; fault tests that kill or restart the broker keep it on the session's Redis instead.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from pathlib import Path

import redis

from tests.conftest import WorkerProcess, start_worker_process

TASKS = 1000
KILLS = 5
TASK_SECONDS = 0.02
REDELIVERY_BOUND = 120.0  # the promise; observed values are printed
CONCURRENCY = 2
APP = "tests.support.delivery_worker_app"
COUNT_TASK = "tests.delivery.count"


class Run:
    """One scenario: its counter hash, its workers, and the counts at the end."""

    def __init__(self, env: dict[str, str], run_dir: Path, client_app, pool: str,  # type: ignore[no-untyped-def]
                 counter_url: str | None = None, tasks: int = TASKS) -> None:
        self.env, self.run_dir, self.client_app, self.pool = env, run_dir, client_app, pool
        self.counter_url = counter_url or env["BROKER_URL"]
        self.counter_key = f"{env['REDIS_KEY_PREFIX']}delivery-test:{secrets.token_hex(4)}"
        self.redis = redis.Redis.from_url(self.counter_url)
        self.workers: list[WorkerProcess] = []
        self.tasks = tasks
        self.sent: list[str] = []
        self.done_at = 0.0

    def start_worker(self, concurrency: int = CONCURRENCY) -> WorkerProcess:
        worker = start_worker_process(self.env, self.run_dir, self.pool, concurrency, app=APP,
                                      ping_app=self.client_app)
        self.workers.append(worker)
        return worker

    def send(self, tasks: int, seconds: float = TASK_SECONDS, **options) -> list[str]:  # type: ignore[no-untyped-def]
        ids = [self.client_app.send_task(COUNT_TASK, args=(self.counter_url, self.counter_key, seconds),
                                         **options).id for _ in range(tasks)]
        self.sent += ids
        return ids

    def completed(self) -> int:
        return int(self.redis.hlen(self.counter_key))

    def counts(self) -> dict[str, int]:
        runs = [int(value) for value in self.redis.hvals(self.counter_key)]
        return {"sent": self.tasks, "completed": len(runs), "lost": self.tasks - len(runs),
                "duplicated": sum(1 for value in runs if value > 1)}

    def missing(self) -> list[str]:
        """Task ids sent through :meth:`send` that never completed."""
        done = {field.decode() for field in self.redis.hkeys(self.counter_key)}
        return [task_id for task_id in self.sent if task_id not in done]

    def wait_for_all(self, timeout: float) -> float:
        started = time.monotonic()
        while self.completed() < self.tasks and time.monotonic() - started < timeout:
            time.sleep(0.2)
        self.done_at = time.monotonic()  # when the last task completed (to 0.2 s), or gave up
        # A little longer, so that a late duplicate would still be counted.
        time.sleep(2.0)
        return time.monotonic() - started

    def wait_until_completed(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.completed() < count:
            assert time.monotonic() < deadline, f"only {self.completed()} of {count} tasks completed"
            time.sleep(0.05)

    def recover_after_last_kill(self, name: str) -> tuple[dict[str, int], float]:
        """A fresh worker gives the killed workers' messages back; the counts and seconds from now to the end."""
        last_kill = time.monotonic()
        self.start_worker()
        self.wait_for_all(timeout=REDELIVERY_BOUND)
        redelivery = time.monotonic() - last_kill
        counts = self.counts()
        report(name, counts, redelivery)
        return counts, redelivery

    def close(self) -> None:
        for worker in self.workers:
            if worker.proc.poll() is None:
                worker.stop()
        self.redis.delete(self.counter_key, self.counter_key + ":started")
        self.redis.close()


def sigkill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def report(name: str, counts: dict[str, int], seconds: float, what: str = "from the last kill") -> None:
    print(f"\n{name}: {counts} seconds {what} to the last completion: {seconds:.1f}")
