"""`make bench`: costs of the tenant machinery, as ratios against a baseline measured in the same run.

1. Task throughput: a plain Celery no-op task (baseline) against a BaseTask no-op carrying tenant headers,
   drained by one real worker (prefork, concurrency 2) on a real Redis. Rounds alternate to cancel drift.
2. Worker memory: resident set of the worker and its children after each phase, against after warm-up.
3. Database: a query in a tenant session (RLS with the sealed tenant + tenant_guard.enter per transaction + ORM
   criteria + DISCARD ALL when the connection goes back to the pool) against the same query in a plain session
   of a superuser (no RLS); and the same tenant session with against without the DISCARD ALL reset.
   `python -m bench.run --database-only` runs this part alone.

Results go to stdout and `bench/results/latest.json`. No absolute number is asserted anywhere.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
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


def database_benchmark(admin_url: str, owner_url: str, runtime_url: str, queries: int = 2000) -> dict:
    from sqlalchemy import create_engine, func, select, text
    from sqlalchemy.orm import Session

    from worker.db.engine import get_engine
    from worker.db.models import Organization, TestSet
    from worker.db.session import tenant_session

    owner = create_engine(owner_url)
    org = uuid.uuid4()
    with tenant_session(org, None, engine=owner) as db:
        db.add(Organization(id=org, name="bench"))
        db.flush()
        db.add_all([TestSet(organization_id=org, name=f"s{i}") for i in range(20)])
    # The worker's engines: DISCARD ALL on return; the other one only rolls back (what SQLAlchemy does by default).
    runtime = get_engine(runtime_url, pool_size=5, max_overflow=0, pool_timeout=30)
    no_reset = get_engine(runtime_url, pool_size=5, max_overflow=0, pool_timeout=30, discard_on_return=False,
                          pool_reset_on_return="rollback")
    admin = create_engine(admin_url)

    def plain() -> float:
        started = time.perf_counter()
        for _ in range(queries):
            with Session(admin) as db, db.begin():
                db.execute(text("select count(*) from test_set where organization_id = :o"), {"o": org}).scalar()
        return queries / (time.perf_counter() - started)

    def tenant(engine=runtime) -> float:  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        for _ in range(queries):
            with tenant_session(org, None, engine=engine) as db:
                db.scalar(select(func.count()).select_from(TestSet))
        return queries / (time.perf_counter() - started)

    plain(), tenant(), tenant(no_reset)  # warm-up
    plain_runs, tenant_runs, no_reset_runs = [], [], []
    for _ in range(ROUNDS):
        plain_runs.append(plain())
        tenant_runs.append(tenant())
        no_reset_runs.append(tenant(no_reset))
    for engine in (owner, admin):
        engine.dispose()
    return {
        "baseline_queries_per_s": round(statistics.median(plain_runs), 1),
        "tenant_queries_per_s": round(statistics.median(tenant_runs), 1),
        "query_ratio": round(statistics.median(tenant_runs) / statistics.median(plain_runs), 3),
        "tenant_without_reset_queries_per_s": round(statistics.median(no_reset_runs), 1),
        "reset_ratio": round(statistics.median(tenant_runs) / statistics.median(no_reset_runs), 3),
    }


def main() -> int:
    with migrated_database() as db:
        results = {}
        if "--database-only" not in sys.argv:
            results["tasks"] = task_benchmark(bench_environment(db))
        results["database"] = database_benchmark(db.admin_url, db.owner_url, db.runtime_url)
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / "latest.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
