"""`python -m bench.metrics`: no-op task throughput of one worker with /metrics off against on.

One worker at a time (prefork, concurrency 2, the image's prefetch multiplier 1), started afresh for each round with
METRICS_PORT unset or set, rounds alternating to cancel drift; the tenant no-op task of bench/tasks.py with tenant
headers. Prints the medians and their ratio; nothing is asserted.
"""

from __future__ import annotations

import json
import statistics
import sys
import uuid

from bench.common import RUN_DIR, bench_environment, drain, env_int, migrated_database, product_client
from tests.conftest import start_worker_process
from worker.dev.services import free_port

TASKS_PER_ROUND = env_int("BENCH_TASKS", 1500)
ROUNDS = env_int("BENCH_ROUNDS", 3)
HEADERS = {"organization_id": str(uuid.uuid4()), "user_id": str(uuid.uuid4())}


def one_round(env: dict[str, str], client, metrics: bool) -> float:  # type: ignore[no-untyped-def]
    env = {**env, "METRICS_PORT": str(free_port())} if metrics else env
    worker = start_worker_process(env, RUN_DIR, pool="prefork", concurrency=2, app="bench.worker_app",
                                  extra_args=("--prefetch-multiplier", "1"), ping_app=client)
    try:
        drain(client, "bench.noop_tenant", 200, HEADERS)  # warm-up
        return drain(client, "bench.noop_tenant", TASKS_PER_ROUND, HEADERS)
    finally:
        worker.stop()


def main() -> int:
    with migrated_database() as db:
        env = bench_environment(db)
        client = product_client(env)
        off, on = [], []
        for _ in range(ROUNDS):
            off.append(one_round(env, client, metrics=False))
            on.append(one_round(env, client, metrics=True))
        client.close()
    print(json.dumps({"metrics_off_tasks_per_s": [round(r, 1) for r in off],
                      "metrics_on_tasks_per_s": [round(r, 1) for r in on],
                      "on_over_off": round(statistics.median(on) / statistics.median(off), 3)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
