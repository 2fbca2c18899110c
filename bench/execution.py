"""Test execution benchmarks (`python -m bench.execution`, part of `make bench`), as ratios from one run.

1. Speed: 1,000 tests against a loopback endpoint answering after 100 ms, one worker at the image defaults
   (prefork, CELERY_WORKER_CONCURRENCY=8), per-run cap 100. Against the ideal (tests x latency / cap) and
   against the baseline of one Celery task per test (a plain task that calls the endpoint) on prefork 8.
2. Scale: 10,000 tests: the worker tree's resident memory before and after, and the time from enqueueing the
   run to the endpoint's first call.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from bench.endpoint import BenchEndpoint
from config import load_settings
from tests.conftest import base_environment, start_worker_process
from tests.support.execution_data import ExecutionData
from worker.dev.provision import drop_database, provision_database
from worker.dev.services import postgres_admin_url, redis_base_url

ROOT = Path(__file__).resolve().parents[1]
RUN_DIR = ROOT / ".run" / "bench"
LATENCY = 0.1
CAP = 100
TESTS = int(os.environ.get("BENCH_EXECUTION_TESTS", "1000"))
SCALE_TESTS = int(os.environ.get("BENCH_EXECUTION_SCALE_TESTS", "10000"))
EXECUTE = "rhesis.backend.tasks.execute_test_configuration"


def _rss_mb(pid: int) -> float:
    import psutil

    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20


def _cpu_seconds(pid: int) -> float:
    import psutil

    process = psutil.Process(pid)
    total = 0.0
    for each in [process, *process.children(recursive=True)]:
        times = each.cpu_times()
        total += times.user + times.system
    return total


def _wait_final(data: ExecutionData, org: str, run_id: str, timeout: float = 900) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        run = data.run(org, run_id)
        if run is not None and run.status in ("completed", "partial", "failed", "cancelled"):
            return run
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run_id} did not finish")
        time.sleep(0.01)


def _execute(client: Any, data: ExecutionData, server: BenchEndpoint, tests: int, worker_pid: int
             ) -> tuple[float, float, Any]:
    """(seconds from enqueue to the run's end, seconds from enqueue to the first endpoint call, run)."""
    configuration = data.configuration(server.url + "/chat", tests, max_concurrency=CAP)
    server.reset()
    cpu_before = _cpu_seconds(worker_pid)
    started = time.monotonic()
    result = client.send_task(EXECUTE, args=[configuration.configuration_id],
                              headers={"organization_id": configuration.organization_id,
                                       "user_id": configuration.user_id})
    run_id = result.get(timeout=120)["test_run_id"]
    run = _wait_final(data, configuration.organization_id, run_id)
    elapsed = time.monotonic() - started
    calling = (server.last_answer_at or 0) - (server.first_call_at or 0)
    print(f"{tests} tests: {elapsed:.3f} s in all, first call after {server.first_call_at - started:.3f} s, "
          f"calls for {calling:.3f} s (mean in flight {tests * LATENCY / calling:.1f}), "
          f"run closed {time.monotonic() - server.last_answer_at:.3f} s after the last answer; "
          f"in flight: {server.in_flight_profile(CAP)}; worker CPU "
          f"{(_cpu_seconds(worker_pid) - cpu_before) * 1000 / tests:.2f} ms per test", file=sys.stderr)
    return elapsed, (server.first_call_at or started) - started, run


def _baseline(client: Any, server: BenchEndpoint, tests: int) -> float:
    server.reset()
    started = time.monotonic()
    results = [client.send_task("bench.call_endpoint", args=[server.url + "/chat", f"baseline-{n}"],
                                queue="execution") for n in range(tests)]
    for result in results:
        result.get(timeout=600)
    return time.monotonic() - started


def main() -> int:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    admin_url = postgres_admin_url(RUN_DIR)
    db = provision_database(admin_url, prefix="twbenchx")
    from worker.db.migrate import migrate

    migrate(db.owner_url, db.runtime_url)
    env = {**base_environment(redis_base_url(RUN_DIR), db, f"twbenchx-{secrets.token_hex(4)}:"),
           "EXECUTION_ALLOW_PRIVATE_TARGETS": "yes", "CELERY_WORKER_CONCURRENCY": "8",
           **({"EXECUTION_LANE_CONCURRENCY": os.environ["BENCH_LANE"]} if "BENCH_LANE" in os.environ else {})}
    from worker.app import create_app

    client = create_app(load_settings(environ=env), main="bench-execution-client")
    import bench.tasks  # noqa: F401 - task names for the client

    data = ExecutionData(db.owner_url)
    results: dict[str, Any] = {}
    try:
        with BenchEndpoint(LATENCY) as server:
            worker = start_worker_process(env, RUN_DIR, pool="prefork", concurrency=8, app="bench.worker_app",
                                          ping_app=client)
            try:
                _execute(client, data, server, 50, worker.proc.pid)  # warm-up: pool children, connections, the loop
                wall, first_call, run = _execute(client, data, server, TESTS, worker.proc.pid)
                calls = server.total_calls()
                baseline = _baseline(client, server, TESTS)
                rss_before = _rss_mb(worker.proc.pid)
                scale_wall, scale_first_call, scale_run = _execute(client, data, server, SCALE_TESTS, worker.proc.pid)
                rss_after = _rss_mb(worker.proc.pid)
            finally:
                worker.stop()
        ideal = TESTS * LATENCY / CAP
        results = {
            "tests": TESTS, "latency_s": LATENCY, "run_cap": CAP,
            "ideal_s": round(ideal, 3), "execution_s": round(wall, 3), "ratio_to_ideal": round(wall / ideal, 3),
            "endpoint_calls": calls, "status": run.status,
            "one_task_per_test_s": round(baseline, 3), "speedup_over_one_task_per_test": round(baseline / wall, 2),
            "enqueue_to_first_call_s": round(first_call, 3),
            "scale_tests": SCALE_TESTS, "scale_execution_s": round(scale_wall, 3),
            "scale_ratio_to_ideal": round(scale_wall / (SCALE_TESTS * LATENCY / CAP), 3),
            "scale_enqueue_to_first_call_s": round(scale_first_call, 3), "scale_status": scale_run.status,
            "worker_rss_before_mb": round(rss_before, 1), "worker_rss_after_mb": round(rss_after, 1),
            "worker_rss_growth_mb": round(rss_after - rss_before, 1),
        }
    finally:
        data.close()
        client.close()
        drop_database(admin_url, db)
    print(json.dumps(results, indent=2))
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "execution.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
