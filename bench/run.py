"""`make bench`: costs of the tenant machinery, as ratios against a baseline measured in the same run.

1. Task throughput: a plain Celery no-op task (baseline) against a BaseTask no-op carrying tenant headers,
   drained by one real worker (prefork, concurrency 2) on a real Redis, in alternating batches queued while the
   worker consumes nothing and drained at its own pace (bench.common.drain_full_queue); also CPU per task.
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
    Batch,
    bench_environment,
    cpu_seconds,
    drain,
    drain_full_queue,
    env_int,
    migrated_database,
    product_client,
    rss_mb,
)
from bench.database import database_benchmark
from bench.spread import pair_ratios, summarize
from bench.tenancy import consuming
from tests.conftest import start_worker_process

TASKS_PER_ROUND = env_int("BENCH_TASKS", 1000)
ROUNDS = env_int("BENCH_ROUNDS", 10)
ORG, USER = str(uuid.uuid4()), str(uuid.uuid4())


def task_benchmark(env: dict[str, str]) -> dict:
    client = product_client(env)
    worker = start_worker_process(env, RUN_DIR, pool="prefork", concurrency=2, app="bench.worker_app",
                                  ping_app=client)
    queues = ["celery", "execution"]  # what start_worker_process's worker consumes

    def batch(name: str, headers: dict | None) -> Batch:
        return drain_full_queue(client, name, TASKS_PER_ROUND, headers,
                                resume=lambda: consuming(client, worker.node, queues, on=True),
                                pause=lambda: consuming(client, worker.node, queues, on=False),
                                cpu_seconds=lambda: cpu_seconds(worker.proc.pid))

    try:
        drain(client, "bench.noop_plain", 200, None)  # warm-up
        drain(client, "bench.noop_tenant", 200, {"organization_id": ORG, "user_id": USER})
        consuming(client, worker.node, queues, on=False)
        rss_start = rss_mb(worker.proc.pid)
        plain, tenant = [], []
        for pair in range(ROUNDS):
            kinds = ("plain", "tenant") if pair % 2 == 0 else ("tenant", "plain")  # ABBA
            for kind in kinds:
                if kind == "plain":
                    plain.append(batch("bench.noop_plain", None))
                else:
                    tenant.append(batch("bench.noop_tenant", {"organization_id": ORG, "user_id": USER}))
        rss_end = rss_mb(worker.proc.pid)
    finally:
        worker.stop()
        client.close()
    return {
        "baseline_tasks_per_s": round(statistics.median(b.tasks_per_s for b in plain), 1),
        "tenant_tasks_per_s": round(statistics.median(b.tasks_per_s for b in tenant), 1),
        "throughput_ratio": summarize(pair_ratios([b.tasks_per_s for b in tenant], [b.tasks_per_s for b in plain])),
        "cpu_per_task_ratio": summarize(pair_ratios([b.cpu_s_per_task for b in tenant],
                                                    [b.cpu_s_per_task for b in plain])),
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
