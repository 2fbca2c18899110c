"""`python -m bench.fetch`: task throughput with the atomic fetch (worker/delivery/fetch.py) against kombu's BRPOP.

One real worker at a time (prefork, concurrency 2) drains BENCH_TASKS no-op tasks (default 2,000) published up
front; the candidate is the product worker, the baseline the same worker with ``atomic_fetch = False``. Rounds
alternate to cancel drift; the result is the ratio of medians, printed. No absolute number is asserted anywhere.
"""

from __future__ import annotations

import json
import os
import secrets
import statistics
import sys
import time

from bench.run import RUN_DIR
from config import load_settings
from tests.conftest import base_environment, start_worker_process
from worker.dev.provision import drop_database, provision_database
from worker.dev.services import postgres_admin_url, redis_base_url
from worker.message_guard.transport import GuardedChannel, GuardedTransport

TASKS = int(os.environ.get("BENCH_TASKS", "2000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
APPS = {"brpop": "bench.worker_app_brpop", "take": "bench.worker_app"}


class BrpopGuardedChannel(GuardedChannel):
    atomic_fetch = False


class BrpopGuardedTransport(GuardedTransport):
    Channel = BrpopGuardedChannel


def one_round(env: dict[str, str], client, app: str) -> float:  # type: ignore[no-untyped-def]
    """Tasks per second from the first publish to the last result, the worker started beforehand."""
    worker = start_worker_process(env, RUN_DIR, pool="prefork", concurrency=2, app=app, ping_app=client)
    try:
        task = client.tasks["bench.noop_plain"]
        [result.get(timeout=120) for result in [task.apply_async() for _ in range(100)]]  # warm-up
        started = time.perf_counter()
        results = [task.apply_async() for _ in range(TASKS)]
        for result in results:
            result.get(timeout=300)
        return TASKS / (time.perf_counter() - started)
    finally:
        worker.stop()


def main() -> int:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    admin_url = postgres_admin_url(RUN_DIR)
    db = provision_database(admin_url, prefix="twbench")
    try:
        from worker.app import create_app
        from worker.db.migrate import migrate

        migrate(db.owner_url, db.runtime_url)
        env = base_environment(redis_base_url(RUN_DIR), db, f"twbench-{secrets.token_hex(4)}:")
        client = create_app(load_settings(environ=env), main="bench-client")
        import bench.tasks  # noqa: F401 - task names for the client

        rates: dict[str, list[float]] = {name: [] for name in APPS}
        for _ in range(ROUNDS):
            for name, app in APPS.items():
                rates[name].append(one_round(env, client, app))
        client.close()
    finally:
        drop_database(admin_url, db)
    result = {f"{name}_tasks_per_s": [round(rate, 1) for rate in runs] for name, runs in rates.items()}
    result["take_over_brpop"] = round(statistics.median(rates["take"]) / statistics.median(rates["brpop"]), 3)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
