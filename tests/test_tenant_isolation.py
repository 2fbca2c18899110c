"""Isolation under load: a DB pool smaller than the worker's concurrency, many tenants interleaved.

At least 20 tenants and 10,000 tenant-scoped queries through real tasks in a real worker: no task may see a
row of another tenant, and a connection fresh from the pool never carries a tenant setting.
"""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import create_engine, func, select

from worker.db.models import Organization, Test, TestSet
from worker.db.session import tenant_session

TENANTS = 20
TASKS_PER_TENANT = 10
QUERIES_PER_TASK = 52  # 20 * 10 * 52 = 10,400 tenant-scoped queries
TIMEOUT = 300


@pytest.fixture(scope="module")
def tenants(migrated_database) -> list[tuple[str, int]]:  # type: ignore[no-untyped-def]
    """Organizations with different numbers of test sets (i + 1) and tests, inserted under RLS as the owner."""
    engine = create_engine(migrated_database.owner_url)
    made = []
    for i in range(TENANTS):
        org_id = uuid.uuid4()
        with tenant_session(org_id, None, engine=engine) as db:
            db.add(Organization(id=org_id, name=f"isolation-{i}"))
            db.flush()
            for j in range(i + 1):
                test_set = TestSet(organization_id=org_id, name=f"set {j}")
                db.add(test_set)
                db.flush()
                db.add(Test(organization_id=org_id, test_set_id=test_set.id, prompt=f"prompt {i}/{j}"))
        made.append((str(org_id), i + 1))
    engine.dispose()
    return made


@pytest.mark.parametrize(("pool", "concurrency"), [("threads", 8), ("prefork", 3), ("gevent", 16)])
def test_no_cross_tenant_rows_under_load(worker_factory, client_app, tenants, pool: str, concurrency: int) -> None:
    worker = worker_factory(pool=pool, concurrency=concurrency,
                            env={"DATABASE_POOL_SIZE": "2", "DATABASE_MAX_OVERFLOW": "0"})
    scan = client_app.tasks["tests.probe.scan_rows"]
    sent = []
    for _round in range(TASKS_PER_TENANT):
        for org, _ in tenants:  # interleave tenants so consecutive tasks on a connection differ
            sent.append((org, scan.apply_async(args=[QUERIES_PER_TASK], headers={"organization_id": org},
                                               queue="celery")))
    total_queries = foreign = leaked = 0
    for org, result in sent:
        seen = result.get(TIMEOUT)
        assert seen["organization_id"] == org
        assert seen["rows"] > 0
        foreign += seen["foreign_rows"]
        leaked += seen["leaked_settings"]
        total_queries += seen["queries"]
    assert total_queries >= 10_000
    assert foreign == 0
    assert leaked == 0
    assert worker.proc.poll() is None
    callback = client_app.tasks["tests.probe.db_wait_callback"].apply_async().get(TIMEOUT)
    # Under gevent, psycopg2 must yield to other greenlets rather than block the whole process.
    assert callback == ("psycogreen.gevent.gevent_wait_callback" if pool == "gevent" else None)
    assert worker.stop() == 0  # so that the next pool type is measured alone


def test_counts_match_each_tenant(worker_factory, client_app, tenants) -> None:
    worker_factory(pool="threads", concurrency=4)
    count = client_app.tasks["rhesis.backend.tasks.count_test_sets"]
    manual = client_app.tasks["rhesis.backend.tasks.manual_db_example"]
    results = [(expected, count.apply_async(headers={"organization_id": org}),
                manual.apply_async(headers={"organization_id": org})) for org, expected in tenants]
    for expected, counted, manually in results:
        assert counted.get(TIMEOUT)["count"] == expected
        assert manually.get(TIMEOUT) == {"test_set_count": expected}


def test_runtime_role_sees_nothing_without_a_tenant(migrated_database, tenants) -> None:
    engine = create_engine(migrated_database.runtime_url)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(TestSet)).scalar() == 0
        assert conn.execute(select(func.count()).select_from(Test)).scalar() == 0
    engine.dispose()
