"""Revision 0005 (execution): the new tenant tables are isolated, old statuses migrate both ways, one result per test
and run, and the cross-tenant stalled-run sweep hands the runtime role ids, never rows."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from sqlalchemy import create_engine, func, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, ProgrammingError
from sqlalchemy.pool import NullPool

from tests.db.conftest import url_for_role
from worker.db.migrate import alembic_config, migrate
from worker.db.models import (
    Endpoint,
    Metric,
    Organization,
    Test,
    TestConfiguration,
    TestConfigurationMetric,
    TestResult,
    TestRun,
    TestRunItem,
    TestSet,
    TestSetMetric,
    User,
)
from worker.db.session import tenant_session

STALLED = "select * from tenant_guard.execution_stalled_runs(:grace)"


@dataclass
class Org:
    id: uuid.UUID
    user: uuid.UUID
    test_set: uuid.UUID
    tests: list[uuid.UUID]
    config: uuid.UUID
    metric: uuid.UUID


def make_org(engine: Engine, tests: int = 2) -> Org:
    org = uuid.uuid4()
    with tenant_session(org, None, engine=engine) as db:
        db.add(Organization(id=org, name=f"exec {org.hex[:6]}"))
        db.flush()
        user = User(organization_id=org, email=f"{org.hex[:8]}@example.invalid")
        test_set = TestSet(organization_id=org, name="s")
        endpoint = Endpoint(organization_id=org, name="e", url="http://127.0.0.1:9/")
        metric = Metric(organization_id=org, name="m", kind="contains", parameters={"value": "x"})
        db.add_all([user, test_set, endpoint, metric])
        db.flush()
        rows = [Test(organization_id=org, test_set_id=test_set.id, prompt=f"p{i}") for i in range(tests)]
        config = TestConfiguration(organization_id=org, test_set_id=test_set.id, endpoint_id=endpoint.id)
        db.add_all([*rows, config])
        db.flush()
        db.add(TestSetMetric(organization_id=org, test_set_id=test_set.id, metric_id=metric.id))
        db.add(TestConfigurationMetric(organization_id=org, test_configuration_id=config.id, metric_id=metric.id))
        return Org(org, user.id, test_set.id, [t.id for t in rows], config.id, metric.id)


def make_run(engine: Engine, org: Org, status: str = "running", age: timedelta = timedelta(0),
             items: dict[int, tuple[str, timedelta | None]] | None = None) -> uuid.UUID:
    """A run of ``org`` last updated ``age`` ago, with items {test index: (state, lease expiry from now)}."""
    with tenant_session(org.id, org.user, engine=engine) as db:
        run = TestRun(organization_id=org.id, user_id=org.user, test_configuration_id=org.config, status=status)
        db.add(run)
        db.flush()
        for index, (state, expires_in) in (items or {}).items():
            db.add(TestRunItem(organization_id=org.id, test_run_id=run.id, test_id=org.tests[index], state=state,
                               lease_expires_at=None if expires_in is None else datetime.now(UTC) + expires_in))
        db.flush()
        db.execute(update(TestRun).where(TestRun.id == run.id).values(updated_at=func.now() - age))
        return run.id


@pytest.fixture(scope="module")
def orgs(owner_engine: Engine) -> tuple[Org, Org]:
    return make_org(owner_engine), make_org(owner_engine)


def test_a_tenant_sees_none_of_another_tenants_execution_rows(runtime_engine, owner_engine, orgs) -> None:
    a, b = orgs
    make_run(owner_engine, b, items={0: ("pending", None)})
    with tenant_session(a.id, engine=runtime_engine) as db:
        for model in (Metric, TestSetMetric, TestConfigurationMetric, TestRunItem):
            assert db.scalar(select(func.count()).select_from(model).where(model.organization_id == b.id)) == 0
            # raw SQL too: row-level security, not the ORM filter, is what hides them
            table = model.__tablename__
            assert db.execute(text(f"select count(*) from {table} where organization_id = :b"),
                              {"b": b.id}).scalar() == 0
    with tenant_session(b.id, engine=runtime_engine) as db:
        for model in (Metric, TestSetMetric, TestConfigurationMetric, TestRunItem):
            assert db.scalar(select(func.count()).select_from(model)) >= 1, model


def test_links_cannot_point_at_another_organizations_rows(owner_engine, orgs) -> None:
    a, b = orgs
    # A's organization with B's metric, B's test set: the composite foreign keys refuse both.
    for row in (TestSetMetric(organization_id=a.id, test_set_id=a.test_set, metric_id=b.metric),
                TestConfigurationMetric(organization_id=a.id, test_configuration_id=a.config, metric_id=b.metric),
                TestSetMetric(organization_id=a.id, test_set_id=b.test_set, metric_id=a.metric)):
        with pytest.raises(IntegrityError, match="same_org"), tenant_session(a.id, engine=owner_engine) as db:
            db.add(row)
            db.flush()
    run_a = make_run(owner_engine, a)
    with pytest.raises(IntegrityError, match="same_org"), tenant_session(a.id, engine=owner_engine) as db:
        db.add(TestRunItem(organization_id=a.id, test_run_id=run_a, test_id=b.tests[0]))
        db.flush()


def test_one_result_per_test_and_run(owner_engine, orgs) -> None:
    a, _ = orgs
    run = make_run(owner_engine, a)
    with tenant_session(a.id, engine=owner_engine) as db:
        db.add(TestResult(organization_id=a.id, test_run_id=run, test_id=a.tests[0], status="pass"))
    with pytest.raises(IntegrityError, match="uq_test_result_test_run_id_test_id"), \
            tenant_session(a.id, engine=owner_engine) as db:
        db.add(TestResult(organization_id=a.id, test_run_id=run, test_id=a.tests[0], status="fail"))
        db.flush()


def test_a_task_id_names_one_run_per_organization(owner_engine, orgs) -> None:
    a, b = orgs
    task_id = f"task-{uuid.uuid4()}"
    for org in (a, b):  # the same id in two organizations is two runs
        with tenant_session(org.id, engine=owner_engine) as db:
            db.add(TestRun(organization_id=org.id, test_configuration_id=org.config, task_id=task_id))
    with pytest.raises(IntegrityError, match="ix_test_run_organization_id_task_id"), \
            tenant_session(a.id, engine=owner_engine) as db:
        db.add(TestRun(organization_id=a.id, test_configuration_id=a.config, task_id=task_id))
        db.flush()


def test_check_constraints_refuse_unknown_values(owner_engine, orgs) -> None:
    a, _ = orgs
    for row in (Metric(organization_id=a.id, name="x", kind="no_such_kind"),
                Metric(organization_id=a.id, name="x", kind="llm_judge", threshold_operator="=>"),
                Metric(organization_id=a.id, name="x", kind="llm_judge", judge_provider="openai"),
                Endpoint(organization_id=a.id, name="x", url="http://h/", method="FETCH"),
                Endpoint(organization_id=a.id, name="x", url="http://h/", auth_type="basic"),
                Endpoint(organization_id=a.id, name="x", url="http://h/", max_concurrency=0),
                TestRun(organization_id=a.id, test_configuration_id=a.config, status="pending")):
        with pytest.raises(IntegrityError, match="ck_"), tenant_session(a.id, engine=owner_engine) as db:
            db.add(row)
            db.flush()


# -- the stalled-run sweep ------------------------------------------------------------------------------------
def _stalled(engine: Engine, grace: int) -> list[tuple[uuid.UUID, uuid.UUID | None, uuid.UUID]]:
    with engine.connect() as conn:  # no tenant at all: the runtime role as the sweeper calls it
        return [tuple(row) for row in conn.execute(text(STALLED), {"grace": grace})]


def test_stalled_runs_across_tenants_for_the_runtime_role(runtime_engine, owner_engine, orgs) -> None:
    a, b = orgs
    old = make_run(owner_engine, a, "running", age=timedelta(hours=1))
    expired = make_run(owner_engine, b, "queued", items={0: ("running", timedelta(seconds=-5)),
                                                          1: ("pending", None)})
    fresh = make_run(owner_engine, b, "running", items={0: ("running", timedelta(minutes=5)),
                                                        1: ("done", timedelta(seconds=-5))})
    finished = make_run(owner_engine, a, "completed", age=timedelta(hours=1),
                        items={0: ("running", timedelta(seconds=-5))})
    mine = {old, expired, fresh, finished}
    found = [row for row in _stalled(runtime_engine, 600) if row[2] in mine]
    assert sorted(found) == sorted([(a.id, a.user, old), (b.id, b.user, expired)])
    # The grace applies to updated_at only; an expired lease is stalled whatever the grace.
    assert {row[2] for row in _stalled(runtime_engine, 7200)} & mine == {expired}

    # Progress takes a run off the list: the lease is renewed / the run finishes.
    with tenant_session(b.id, engine=owner_engine) as db:
        db.execute(update(TestRunItem).where(TestRunItem.test_run_id == expired)
                   .values(lease_expires_at=func.now() + timedelta(minutes=5)))
    with tenant_session(a.id, engine=owner_engine) as db:
        db.execute(update(TestRun).where(TestRun.id == old).values(status="failed"))
    assert {row[2] for row in _stalled(runtime_engine, 600)} & mine == set()
    with tenant_session(b.id, engine=owner_engine) as db:
        db.execute(update(TestRunItem).where(TestRunItem.test_run_id == expired)
                   .values(state="done"))
        db.execute(update(TestRun).where(TestRun.id == expired).values(updated_at=func.now() - timedelta(hours=2)))
    assert {row[2] for row in _stalled(runtime_engine, 600)} & mine == {expired}
    with tenant_session(b.id, engine=owner_engine) as db:
        db.execute(text("delete from test_run where id = :r"), {"r": expired})
    assert {row[2] for row in _stalled(runtime_engine, 600)} & mine == set()


def test_the_sweep_gives_the_runtime_role_ids_and_nothing_else(runtime_engine, pgdb) -> None:
    with runtime_engine.connect() as conn:
        result = conn.execute(text(STALLED), {"grace": -86400})  # every active run, whatever its age
        assert list(result.keys()) == ["organization_id", "user_id", "test_run_id"]
        assert all(isinstance(v, uuid.UUID) or v is None for row in result for v in row)
        for table in ("tenant_guard.execution_run", "tenant_guard.execution_lease"):
            with pytest.raises(ProgrammingError, match="permission denied"), conn.begin_nested():
                conn.execute(text(f"select * from {table}"))
        # Without a tenant the runtime role still sees no run row: the function is the only way across.
        assert conn.execute(text("select count(*) from test_run")).scalar() == 0
        conn.rollback()
    admin = create_engine(pgdb.admin_url, poolclass=NullPool)
    with admin.connect() as conn:
        row = conn.execute(text(
            "select p.prosecdef, p.proconfig, p.provolatile, has_function_privilege('public', p.oid, 'EXECUTE') "
            "from pg_proc p where p.oid = 'tenant_guard.execution_stalled_runs(integer)'::regprocedure")).one()
    admin.dispose()
    assert row[0] is True and row[1] == ["search_path=pg_catalog, pg_temp"] and row[2] == "s"
    assert row[3] is False  # PUBLIC may not execute it; migrate grants the runtime role alone


def test_a_role_without_the_grant_cannot_sweep(pgdb, admin_role) -> None:
    role = admin_role("NOSUPERUSER")
    admin = create_engine(pgdb.admin_url, poolclass=NullPool)
    grants = (f'CONNECT ON DATABASE "{pgdb.name}"', "USAGE ON SCHEMA tenant_guard")
    with admin.begin() as conn:  # everything but the function itself
        for grant in grants:
            conn.execute(text(f'GRANT {grant} TO "{role}"'))
    engine = create_engine(url_for_role(pgdb.admin_url, role), poolclass=NullPool)
    try:
        with engine.connect() as conn, pytest.raises(ProgrammingError, match="permission denied for function"):
            conn.execute(text(STALLED), {"grace": 0})
    finally:
        engine.dispose()
        with admin.begin() as conn:
            for grant in grants:
                conn.execute(text(f'REVOKE {grant} FROM "{role}"'))
        admin.dispose()


# -- migrating data both ways -----------------------------------------------------------------------------------
@pytest.fixture
def at_0004(make_database) -> Iterator[tuple]:  # type: ignore[type-arg]
    db = make_database()
    owner = create_engine(db.owner_url, poolclass=NullPool)
    with owner.begin() as conn:
        command.downgrade(alembic_config(conn), "0004")
    yield db, owner
    owner.dispose()


def _rows(admin: Engine, sql: str) -> list[tuple]:  # type: ignore[type-arg]
    with admin.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql))]


def test_old_statuses_migrate_up_and_back(at_0004) -> None:
    db, owner = at_0004
    admin = create_engine(db.admin_url, poolclass=NullPool)  # a superuser: sees every organization's rows
    org, user = uuid.uuid4(), uuid.uuid4()
    with admin.begin() as conn:
        assert conn.execute(text("select to_regclass('public.test_run_item')")).scalar() is None
        conn.execute(text("insert into organization (id, name) values (:o, 'o')"), {"o": org})
        conn.execute(text("insert into \"user\" (id, organization_id, email) values (:u, :o, 'u@x')"),
                     {"u": user, "o": org})
        conn.execute(text("insert into endpoint (organization_id, name, url, method) values (:o, 'e', 'http://h/',"
                          " 'post')"), {"o": org})
        ids = conn.execute(text(
            "with s as (insert into test_set (organization_id, name) values (:o, 's') returning id),"
            " e as (select id from endpoint where organization_id = :o),"
            " c as (insert into test_configuration (organization_id, test_set_id, endpoint_id)"
            "       select :o, s.id, e.id from s, e returning id, test_set_id)"
            " select c.id, c.test_set_id from c"), {"o": org}).one()
        config, test_set = ids
        tests = [conn.execute(text("insert into test (organization_id, test_set_id, prompt) values (:o, :s, 'p')"
                                   " returning id"), {"o": org, "s": test_set}).scalar() for _ in range(4)]
        runs = {status: conn.execute(text(
            "insert into test_run (organization_id, user_id, test_configuration_id, status) "
            "values (:o, :u, :c, :st) returning id"), {"o": org, "u": user, "c": config, "st": status}).scalar()
            for status in ("pending", "running", "completed")}
        for test, status in zip(tests, ("passed", "failed", "skipped", "error"), strict=True):
            conn.execute(text("insert into test_result (organization_id, test_run_id, test_id, status, response) "
                              "values (:o, :r, :t, :st, 'answer')"),
                         {"o": org, "r": runs["completed"], "t": test, "st": status})
        # An old duplicate: the newer of the two is kept.
        conn.execute(text("insert into test_result (organization_id, test_run_id, test_id, status, created_at) "
                          "values (:o, :r, :t, 'error', now() - interval '1 day')"),
                     {"o": org, "r": runs["completed"], "t": tests[0]})

    migrate(db.owner_url, db.runtime_url)
    assert sorted(_rows(admin, "select status from test_run")) == [("completed",), ("queued",), ("running",)]
    assert sorted(_rows(admin, "select status, output from test_result")) == [
        ("error", "answer"), ("fail", "answer"), ("not_scored", "answer"), ("pass", "answer")]
    assert _rows(admin, "select method from endpoint") == [("POST",)]
    # Runs that were active before the revision are visible to the sweep.
    assert {r[0] for r in _rows(admin, "select test_run_id from tenant_guard.execution_run")} == {
        runs["pending"], runs["running"]}

    with owner.begin() as conn:
        command.downgrade(alembic_config(conn), "0004")
    assert sorted(_rows(admin, "select status from test_run")) == [("completed",), ("pending",), ("running",)]
    assert sorted(_rows(admin, "select status, response from test_result")) == [
        ("error", "answer"), ("failed", "answer"), ("passed", "answer"), ("skipped", "answer")]
    assert _rows(admin, "select to_regclass('public.metric'), to_regclass('public.test_run_item'), "
                        "to_regclass('tenant_guard.execution_run'), "
                        "to_regprocedure('tenant_guard.execution_stalled_runs(integer)')") == [(None,) * 4]
    migrate(db.owner_url, db.runtime_url)  # and up again, with the grants checked by migrate
    admin.dispose()
