"""What every benchmark needs: a migrated database, the workers' environment, a client, draining, memory."""

from __future__ import annotations

import gc
import itertools
import os
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psutil
from celery import Celery

from config import load_settings
from tests.conftest import base_environment
from worker.dev.provision import ProvisionedDatabase, drop_database, provision_database
from worker.dev.services import postgres_admin_url, redis_base_url

ROOT = Path(__file__).resolve().parents[1]
RUN_DIR = ROOT / ".run" / "bench"
RESULTS_DIR = ROOT / "bench" / "results"


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, str(default)))


@contextmanager
def migrated_database(prefix: str = "twbench") -> Iterator[ProvisionedDatabase]:
    """A fresh database with the schema and the owner and runtime roles, dropped afterwards."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    admin_url = postgres_admin_url(RUN_DIR)
    db = provision_database(admin_url, prefix=prefix)
    try:
        from worker.db.migrate import migrate

        migrate(db.owner_url, db.runtime_url)
        yield db
    finally:
        from worker.db.engine import reset_engines

        reset_engines()
        drop_database(admin_url, db)


def bench_environment(db: ProvisionedDatabase, redis_base: str | None = None,
                      prefix: str = "twbench") -> dict[str, str]:
    """Workers' and clients' environment: the machine's (or an embedded) Redis unless ``redis_base`` is given."""
    return base_environment(redis_base or redis_base_url(RUN_DIR), db, f"{prefix}-{secrets.token_hex(4)}:")


def product_client(env: dict[str, str], main: str = "bench-client") -> Celery:
    """A producer configured like the product workers of ``env``, knowing the benchmark tasks' names."""
    from worker.app import create_app

    app = create_app(load_settings(environ=env), main=main)
    import bench.tasks  # noqa: F401 - task names for the client

    return app


def drain(app: Celery, name: str, count: int, headers: dict | None = None) -> float:
    """Tasks per second from the first publish to the last result.

    The collector stays out of the timing: a collected result object unsubscribes from its result channel (one
    Redis round trip each), so the garbage of the previous batch would otherwise cost this one, now and then.
    """
    task = app.tasks[name]
    gc.collect()
    gc.disable()
    try:
        started = time.perf_counter()
        results = [task.apply_async(headers=headers) for _ in range(count)]
        for result in results:
            result.get(timeout=300)
        return count / (time.perf_counter() - started)
    finally:
        gc.enable()


@dataclass(frozen=True)
class Batch:
    tasks_per_s: float
    cpu_s_per_task: float
    longest_gap_s: float


def drain_full_queue(app: Celery, name: str, count: int, headers: dict | None, resume: Callable[[], None],
                     pause: Callable[[], None], cpu_seconds: Callable[[], float], poll: float = 0.1) -> Batch:
    """The worker's own pace draining ``count`` tasks queued while it consumed nothing (``resume`` lets it
    consume, ``pause`` stops it again afterwards), and the CPU seconds ``cpu_seconds`` counts per task meanwhile.

    The rate comes from the results' ``date_done`` (stamped by the worker when it stores each result): the span
    from the first to the last stored result, so neither the producer's publishing nor its reading of results is
    inside the timing, nor does it compete with the worker for the CPU meanwhile (it only polls, every ``poll``
    seconds, for results not yet stored).
    """
    task, backend = app.tasks[name], app.backend
    gc.collect()
    results = [task.apply_async(headers=headers) for _ in range(count)]
    pending = {backend.get_key_for_task(result.id): result for result in results}
    done: list[datetime] = []
    gc.disable()  # a collected result unsubscribes from its channel: not while the worker is measured
    try:
        cpu_before = cpu_seconds()
        resume()
        deadline = time.monotonic() + 300
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(pending)} of {count} tasks not done after 300 s")
            time.sleep(poll)
            keys = list(pending)
            for key, raw in zip(keys, backend.client.mget(keys), strict=True):
                meta = backend.decode_result(raw) if raw is not None else None
                if meta and meta["status"] in ("SUCCESS", "FAILURE"):
                    if meta["status"] == "FAILURE":
                        raise RuntimeError(f"benchmark task failed: {meta['result']!r}")
                    done.append(datetime.fromisoformat(meta["date_done"]))
                    del pending[key]
        cpu = cpu_seconds() - cpu_before
        pause()
    finally:
        gc.enable()
    done.sort()
    span = (done[-1] - done[0]).total_seconds()
    gap = max((b - a).total_seconds() for a, b in itertools.pairwise(done)) if count > 1 else 0.0
    return Batch(tasks_per_s=(count - 1) / span, cpu_s_per_task=cpu / count, longest_gap_s=gap)


def cpu_seconds(pid: int, tree: bool = True) -> float:
    """User and system CPU seconds of a process, and with ``tree`` of all its descendants, reaped ones included
    (a prefork pool replaces children after max-tasks-per-child)."""
    root = psutil.Process(pid)
    times = root.cpu_times()
    total = times.user + times.system
    if tree:
        total += times.children_user + times.children_system
        for child in root.children(recursive=True):
            try:
                child_times = child.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += child_times.user + child_times.system
    return total


def process_tree(pid: int) -> list[psutil.Process]:
    proc = psutil.Process(pid)
    return [proc, *proc.children(recursive=True)]


def rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (a worker and its pool children)."""
    return sum(p.memory_info().rss for p in process_tree(pid)) / 2**20


def pss_mb(pid: int) -> float:
    """Proportional set size of the same tree: pages a fork shares count once in all, not once per process."""
    return sum(p.memory_full_info().pss for p in process_tree(pid)) / 2**20
