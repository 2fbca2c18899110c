"""bench.tenancy's building blocks on real workers: the bare baseline is bare, and tenancy adds no Redis command."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bench import tenancy
from bench.bare import create_bare_app
from bench.common import product_client
from bench.tenancy import redis_commands, worker_environment, worker_kinds
from config import load_settings
from tests.conftest import ROOT
from worker.dev.services import start_redis

PRODUCT_MODULES = ("worker.app", "worker.tenant", "worker.message_guard", "worker.base_task", "worker.delivery")


def test_bare_worker_app_loads_none_of_the_product_machinery(session_env: dict[str, str]) -> None:
    # Celery's signals are process-wide: one tenant handler imported by the baseline would run for its tasks too.
    script = ("import json, sys, bench.bare_app; "
              f"print(json.dumps(sorted(m for m in sys.modules if m.startswith({PRODUCT_MODULES!r}))))")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**session_env, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(out.stdout.splitlines()[-1]) == []


@pytest.fixture
def private_redis(run_dir: Path) -> Iterator[tuple[str, redis.Redis]]:
    url, proc = start_redis(run_dir)
    server = redis.Redis.from_url(url)
    yield url, server
    server.close()
    proc.terminate()
    proc.wait(10)


def test_tenant_headers_add_no_redis_command(session_env: dict[str, str], private_redis: tuple[str, redis.Redis]
                                             ) -> None:
    url, server = private_redis
    env = worker_environment({**session_env, "BROKER_URL": f"{url}/0", "CELERY_RESULT_BACKEND": f"{url}/1"}, "2")
    settings = load_settings(environ=env)
    product_app, bare_app = product_client(env), create_bare_app(settings)
    kinds = worker_kinds(product_app, bare_app)
    try:
        counts = redis_commands(kinds["product"], kinds["bare"], server, env, settings.celery_worker_queues,
                                tasks=150, warmup=10)
    finally:
        gc.collect()  # pending results unsubscribe when collected: before their Redis stops
        product_app.close()
        bare_app.close()

    def per_task(batch: dict[str, float]) -> dict[str, float]:
        # Commands of every task; below that are one-off ones (a health-check PING, a reconnect's SELECT).
        return {name: calls for name, calls in batch.items() if calls >= 0.5}

    # Counts that vary from batch to batch whatever the task: LINDEX runs inside the take script once per empty
    # queue key it looks at first (the rotation over queues and priorities decides), UNSUBSCRIBE is the
    # producer's result consumer, which unsubscribes once per result and again when a result object is collected.
    # The others are the same within a few per cent (the producer's result reads, GET, vary a little).
    varying = {"lindex", "unsubscribe"}

    plain, tenant, bare = (counts[name] for name in ("product_plain_no_headers", "product_tenant_headers",
                                                     "bare_celery"))
    assert per_task(tenant["publish"]) == per_task(plain["publish"])
    assert per_task(tenant["consume"]).keys() == per_task(plain["consume"]).keys()
    for name, calls in per_task(tenant["consume"]).items():
        if name not in varying:
            assert abs(calls - plain["consume"][name]) <= max(0.1, 0.1 * calls), (name, counts)
    # The one expected difference from bare Celery: the atomic take (a script) instead of BRPOP.
    assert "evalsha" in per_task(tenant["consume"]) and "brpop" not in tenant["consume"]
    assert "brpop" in per_task(bare["consume"]) and "evalsha" not in per_task(bare["consume"])


def test_interleaved_batches_run_on_their_own_worker_and_count_its_cpu(
        session_env: dict[str, str], private_redis: tuple[str, redis.Redis], monkeypatch: pytest.MonkeyPatch) -> None:
    # Both workers stay up between batches and consume the same queues: a batch taken by the other (paused) worker
    # would fail (bare Celery does not know the tenant task) and its time and CPU would be counted for the wrong kind.
    url, server = private_redis
    monkeypatch.setattr(tenancy, "TASKS", 60)
    monkeypatch.setattr(tenancy, "WARMUP", 5)
    env = worker_environment({**session_env, "BROKER_URL": f"{url}/0", "CELERY_RESULT_BACKEND": f"{url}/1"}, "2")
    settings = load_settings(environ=env)
    product_app, bare_app = product_client(env), create_bare_app(settings)
    kinds = worker_kinds(product_app, bare_app)
    redis_pid = server.info("server")["process_id"]
    try:
        product, bare = tenancy.session(kinds["product"], kinds["bare"], 2, env, redis_pid,
                                        settings.celery_worker_queues)
    finally:
        gc.collect()
        product_app.close()
        bare_app.close()
    assert len(product) == len(bare) == 2
    for batch in product + bare:
        assert batch["tasks_per_s"] > 0
        assert batch["cpu_ms_per_task"] > 0  # the measured worker (and Redis) worked during its batch
    assert {"rss_warm_mb", "pss_after_mb"} <= product[-1].keys() and {"rss_warm_mb", "pss_after_mb"} <= bare[-1].keys()
    assert server.llen(f"{env['REDIS_KEY_PREFIX']}celery") == 0
