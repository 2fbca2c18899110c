"""`python -m bench.fetch`: task throughput with the atomic fetch (worker/delivery/fetch.py) against kombu's BRPOP.

One real worker at a time (prefork, concurrency 2) drains BENCH_TASKS no-op tasks (default 2,000) published up
front; the candidate is the product worker, the baseline the same worker with ``atomic_fetch = False``. Rounds
alternate to cancel drift; the result is the ratio of medians, printed. No absolute number is asserted anywhere.
"""

from __future__ import annotations

import json
import statistics
import sys

from bench.common import RUN_DIR, bench_environment, drain, env_int, migrated_database, product_client
from tests.conftest import start_worker_process
from worker.message_guard.transport import GuardedChannel, GuardedTransport

TASKS = env_int("BENCH_TASKS", 2000)
ROUNDS = env_int("BENCH_ROUNDS", 3)
APPS = {"brpop": "bench.worker_app_brpop", "take": "bench.worker_app"}


class BrpopGuardedChannel(GuardedChannel):
    atomic_fetch = False


class BrpopGuardedTransport(GuardedTransport):
    Channel = BrpopGuardedChannel


def one_round(env: dict[str, str], client, app: str) -> float:  # type: ignore[no-untyped-def]
    """Tasks per second from the first publish to the last result, the worker started beforehand."""
    worker = start_worker_process(env, RUN_DIR, pool="prefork", concurrency=2, app=app, ping_app=client)
    try:
        drain(client, "bench.noop_plain", 100)  # warm-up
        return drain(client, "bench.noop_plain", TASKS)
    finally:
        worker.stop()


def main() -> int:
    with migrated_database() as db:
        env = bench_environment(db)
        client = product_client(env)
        rates: dict[str, list[float]] = {name: [] for name in APPS}
        for _ in range(ROUNDS):
            for name, app in APPS.items():
                rates[name].append(one_round(env, client, app))
        client.close()
    result = {f"{name}_tasks_per_s": [round(rate, 1) for rate in runs] for name, runs in rates.items()}
    result["take_over_brpop"] = round(statistics.median(rates["take"]) / statistics.median(rates["brpop"]), 3)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
