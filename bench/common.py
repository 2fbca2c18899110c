"""What every benchmark needs: a migrated database, the workers' environment, a client, draining, memory."""

from __future__ import annotations

import gc
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
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


def process_tree(pid: int) -> list[psutil.Process]:
    proc = psutil.Process(pid)
    return [proc, *proc.children(recursive=True)]


def rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (a worker and its pool children)."""
    return sum(p.memory_info().rss for p in process_tree(pid)) / 2**20


def pss_mb(pid: int) -> float:
    """Proportional set size of the same tree: pages a fork shares count once in all, not once per process."""
    return sum(p.memory_full_info().pss for p in process_tree(pid)) / 2**20
