"""`make bench`: costs of the tenant machinery, as ratios against a baseline measured in the same run.

1. Task throughput: a plain Celery no-op task (baseline) against a BaseTask no-op carrying tenant headers,
   drained by one real worker (prefork, concurrency 2) on a real Redis. Rounds alternate to cancel drift.
2. Worker memory: resident set of the worker and its children after each phase, against after warm-up.
3. Database: a one-query tenant transaction against the same query without RLS (bench/database.py;
   `python -m bench.run --database-only` or `python -m bench.database` runs this part alone).

Results go to stdout and `bench/results/latest.json`. No absolute number is asserted anywhere.
"""

from __future__ import annotations

import json
import statistics
import sys
import uuid

from bench.common import (
    RESULTS_DIR,
    RUN_DIR,
    bench_environment,
    drain,
    env_int,
    migrated_database,
    product_client,
    rss_mb,
)
from bench.database import database_benchmark
from tests.conftest import start_worker_process

TASKS_PER_ROUND = env_int("BENCH_TASKS", 1500)
ROUNDS = env_int("BENCH_ROUNDS", 3)
ORG, USER = str(uuid.uuid4()), str(uuid.uuid4())


def task_benchmark(env: dict[str, str]) -> dict:
    client = product_client(env)
    worker = start_worker_process(env, RUN_DIR, pool="prefork", concurrency=2, app="bench.worker_app",
                                  ping_app=client)
    try:
        drain(client, "bench.noop_plain", 200, None)  # warm-up
        drain(client, "bench.noop_tenant", 200, {"organization_id": ORG, "user_id": USER})
        rss_start = rss_mb(worker.proc.pid)
        plain, tenant = [], []
        for _ in range(ROUNDS):
            plain.append(drain(client, "bench.noop_plain", TASKS_PER_ROUND, None))
            tenant.append(drain(client, "bench.noop_tenant", TASKS_PER_ROUND, {"organization_id": ORG,
                                                                              "user_id": USER}))
        rss_end = rss_mb(worker.proc.pid)
    finally:
        worker.stop()
        client.close()
    return {
        "baseline_tasks_per_s": round(statistics.median(plain), 1),
        "tenant_tasks_per_s": round(statistics.median(tenant), 1),
        "throughput_ratio": round(statistics.median(tenant) / statistics.median(plain), 3),
        "worker_rss_ratio_after_runs": round(rss_end / rss_start, 3),
    }


def main() -> int:
    with migrated_database() as db:
        results = {}
        if "--database-only" not in sys.argv:
            results["tasks"] = task_benchmark(bench_environment(db))
        results["database"] = database_benchmark(db)
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / "latest.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
