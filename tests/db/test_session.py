"""Tenant sessions against the real runtime role: transaction-local settings, re-application, fail-closed."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, delete, event, func, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from worker.db import liveness
from worker.db.engine import dispose_engines_after_fork, get_engine, reset_engines
from worker.db.models import (
    RLS_TABLES,
    Endpoint,
    Metric,
    Organization,
    TaskEffect,
    Test,
    TestConfiguration,
    TestConfigurationMetric,
    TestResult,
    TestRun,
    TestRunItem,
    TestRunLane,
    TestSet,
    TestSetMetric,
    User,
)
from worker.db.session import TENANT_INFO_KEY, set_tenant, tenant_session
from worker.errors import InvalidTenantError, TenantConflictError, TenantContextError

CURRENT = text("select current_setting('app.current_organization', true), current_setting('app.current_user', true)")
PID = text("select pg_backend_pid()")


def test_settings_are_transaction_local_on_a_reused_pooled_connection(pgdb, seeded) -> None:
    engine = create_engine(pgdb.runtime_url, pool_size=1, max_overflow=0)  # one connection: reuse is certain
    user = str(uuid.uuid4())
    with tenant_session(seeded.org_a, user, engine=engine) as db:
        assert tuple(db.execute(CURRENT).one()) == (seeded.org_a, user)
        pid = db.scalar(PID)
    with engine.connect() as conn:
        assert conn.scalar(PID) == pid
        assert tuple(conn.execute(CURRENT).one()) in (("", ""), (None, None))
        assert conn.scalar(select(func.count()).select_from(TestSet)) == 0
    engine.dispose()


def test_tenant_is_reapplied_after_every_commit_in_the_block(runtime_engine, seeded) -> None:
    with tenant_session(seeded.org_a, None, engine=runtime_engine) as db:
        for _ in range(3):
            assert db.scalar(select(func.count()).select_from(TestSet)) == seeded.sets[seeded.org_a]
            assert db.execute(CURRENT).one()[0] == seeded.org_a
            db.commit()
        db.rollback()
        assert db.scalar(select(func.count()).select_from(Test)) == seeded.tests[seeded.org_a]


def test_user_setting_is_empty_without_a_user(runtime_engine, seeded) -> None:
    with tenant_session(uuid.UUID(seeded.org_b), engine=runtime_engine) as db:
        assert tuple(db.execute(CURRENT).one()) == (seeded.org_b, "")


def test_set_tenant_on_a_plain_session_applies_now_and_at_later_begins(runtime_engine, seeded) -> None:
    with Session(runtime_engine) as db:
        assert db.scalar(select(func.count()).select_from(TestSet)) == 0  # transaction open, no tenant
        set_tenant(db, seeded.org_b, None)
        assert db.scalar(select(func.count()).select_from(TestSet)) == seeded.sets[seeded.org_b]
        db.commit()
        assert db.execute(CURRENT).one()[0] == seeded.org_b
        set_tenant(db, seeded.org_a, None)  # switching inside a transaction takes effect at once
        assert db.scalar(select(func.count()).select_from(TestSet)) == seeded.sets[seeded.org_a]


def test_each_tenant_sees_only_its_rows(runtime_engine, seeded) -> None:
    with tenant_session(seeded.org_a, engine=runtime_engine) as db:
        assert {str(o.id) for o in db.scalars(select(Organization))} == {seeded.org_a}
        assert db.get(TestSet, uuid.UUID(seeded.set_b)) is None
        assert db.get(TestSet, uuid.UUID(seeded.set_a)) is not None
        # Raw SQL is covered by row-level security alone.
        assert db.scalar(text("select count(*) from test")) == seeded.tests[seeded.org_a]
        assert db.execute(text("update test set prompt = prompt where organization_id = :b"),
                          {"b": seeded.org_b}).rowcount == 0


@pytest.mark.parametrize("organization_id", [None, ""])
def test_no_tenant_fails_before_any_query(pgdb, organization_id) -> None:
    engine = create_engine(pgdb.runtime_url)
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    with pytest.raises(TenantContextError):
        with tenant_session(organization_id, engine=engine) as db:
            db.scalar(select(func.count()).select_from(TestSet))
    assert statements == []
    assert engine.pool.checkedout() == 0
    engine.dispose()


@pytest.mark.parametrize(("organization_id", "user_id"), [
    ("not-a-uuid", None), ("1234", None), (str(uuid.uuid4()), "nope"), (str(uuid.uuid4()) + "x", None),
    ("' or true --", None)])
def test_invalid_ids_raise(runtime_engine, organization_id, user_id) -> None:
    with pytest.raises(InvalidTenantError):
        with tenant_session(organization_id, user_id, engine=runtime_engine):
            pass
    with Session(runtime_engine) as db, pytest.raises(InvalidTenantError):
        set_tenant(db, organization_id, user_id)


def test_set_tenant_without_organization_raises(runtime_engine) -> None:
    with Session(runtime_engine) as db, pytest.raises(TenantContextError):
        set_tenant(db, None, str(uuid.uuid4()))


@pytest.fixture
def every_table_has_rows(pgdb, owner_engine) -> Iterator[str]:
    """A fresh organization with one row in every tenant table, so that "sees nothing" is not "has nothing"."""
    org = uuid.uuid4()
    with tenant_session(org, None, engine=owner_engine) as db:
        db.add(Organization(id=org, name="every table"))
        db.flush()
        user = User(organization_id=org, email="someone@example.invalid")
        test_set = TestSet(organization_id=org, name="every table")
        endpoint = Endpoint(organization_id=org, name="every table", url="http://127.0.0.1:9/")
        db.add_all([user, test_set, endpoint])
        db.flush()
        test = Test(organization_id=org, test_set_id=test_set.id, prompt="p")
        config = TestConfiguration(organization_id=org, test_set_id=test_set.id, endpoint_id=endpoint.id)
        db.add_all([test, config])
        db.flush()
        run = TestRun(organization_id=org, test_configuration_id=config.id)
        db.add(run)
        db.flush()
        db.add(TestResult(organization_id=org, test_run_id=run.id, test_id=test.id, status="pass"))
        db.add(TestRunItem(organization_id=org, test_run_id=run.id, test_id=test.id))
        db.add(TestRunLane(organization_id=org, test_run_id=run.id, lane=0, share=1))
        metric = Metric(organization_id=org, name="every table", kind="contains", parameters={"value": "x"})
        db.add(metric)
        db.flush()
        db.add(TestSetMetric(organization_id=org, test_set_id=test_set.id, metric_id=metric.id))
        db.add(TestConfigurationMetric(organization_id=org, test_configuration_id=config.id, metric_id=metric.id))
        db.add(TaskEffect(organization_id=org, task_id="every-table"))
    admin = create_engine(pgdb.admin_url, poolclass=NullPool)  # a superuser: RLS does not apply
    with admin.connect() as conn:
        empty = [table for table in RLS_TABLES if not conn.scalar(text(f'select count(*) from "{table}"'))]
    admin.dispose()
    assert empty == [], "the fixture left these tables empty"
    yield str(org)
    with tenant_session(org, None, engine=owner_engine) as db:
        db.execute(delete(Organization))  # this organization only; its rows go with it (ON DELETE CASCADE)


def test_runtime_role_without_tenant_sees_nothing(runtime_engine, every_table_has_rows) -> None:
    with runtime_engine.connect() as conn:
        for table in RLS_TABLES:
            assert conn.scalar(text(f'select count(*) from "{table}"')) == 0, table
        # An empty value (what a finished transaction leaves) matches nothing either, and does not raise.
        conn.execute(text("select set_config('app.current_organization', '', true)"))
        assert conn.scalar(text("select count(*) from test_set")) == 0


def test_with_check_refuses_another_organizations_rows(runtime_engine, seeded) -> None:
    with pytest.raises(ProgrammingError) as caught:
        with tenant_session(seeded.org_a, engine=runtime_engine) as db:
            db.execute(text("insert into test_set (organization_id, name) values (:b, 'intruder')"),
                       {"b": seeded.org_b})
    assert caught.value.orig.pgcode == "42501"
    assert "row-level security" in str(caught.value)
    with pytest.raises(ProgrammingError) as caught:
        with tenant_session(seeded.org_a, engine=runtime_engine) as db:
            db.execute(text("update test_set set organization_id = :b where id = :s"),
                       {"b": seeded.org_b, "s": seeded.set_a})
    assert caught.value.orig.pgcode == "42501"


def test_orm_refuses_rows_of_another_organization_before_the_database(runtime_engine, seeded) -> None:
    with pytest.raises(TenantConflictError):
        with tenant_session(seeded.org_a, engine=runtime_engine) as db:
            db.add(TestSet(organization_id=uuid.UUID(seeded.org_b), name="intruder"))
    with pytest.raises(TenantConflictError):
        with tenant_session(seeded.org_a, engine=runtime_engine) as db:
            db.get(TestSet, uuid.UUID(seeded.set_a)).organization_id = uuid.UUID(seeded.org_b)


def test_new_rows_get_the_session_tenant(runtime_engine, seeded) -> None:
    user = None  # user rows are in the tenant too; use none to keep the composite FK out of it
    with tenant_session(seeded.org_b, user, engine=runtime_engine) as db:
        test_set = TestSet(name="stamped")
        db.add(test_set)
        db.flush()
        assert str(test_set.organization_id) == seeded.org_b
        db.rollback()


def test_rollback_on_error_and_commit_on_success(runtime_engine, seeded) -> None:
    name = f"commit-{uuid.uuid4().hex[:6]}"
    with pytest.raises(RuntimeError):
        with tenant_session(seeded.org_b, engine=runtime_engine) as db:
            db.add(TestSet(name=name))
            db.flush()
            raise RuntimeError("boom")
    with tenant_session(seeded.org_b, engine=runtime_engine) as db:
        assert db.scalar(select(func.count()).where(TestSet.name == name)) == 0
        db.add(TestSet(name=name))
    with tenant_session(seeded.org_b, engine=runtime_engine) as db:
        assert db.scalar(select(func.count()).where(TestSet.name == name)) == 1
        db.execute(update(TestSet).where(TestSet.name == name).values(name=name + "-renamed"))
        db.execute(text("delete from test_set where name = :n"), {"n": name + "-renamed"})


def test_autocommit_is_refused(pgdb, seeded) -> None:
    with pytest.raises(TenantContextError, match="AUTOCOMMIT"):
        get_engine(pgdb.runtime_url, isolation_level="AUTOCOMMIT")
    for engine in (create_engine(pgdb.runtime_url, isolation_level="AUTOCOMMIT"),
                   create_engine(pgdb.runtime_url).execution_options(isolation_level="AUTOCOMMIT")):
        with pytest.raises(TenantContextError, match="AUTOCOMMIT"):
            with tenant_session(seeded.org_a, engine=engine):
                pass
        with Session(engine) as db, pytest.raises(TenantContextError):
            set_tenant(db, seeded.org_a, None)
        engine.dispose()
    # A connection switched to autocommit behind the engine's back is caught at transaction begin.
    engine = create_engine(pgdb.runtime_url)

    @event.listens_for(engine, "connect")
    def _autocommit(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_connection.autocommit = True

    with pytest.raises(TenantContextError, match="AUTOCOMMIT"):
        with tenant_session(seeded.org_a, engine=engine) as db:
            db.scalar(select(func.count()).select_from(TestSet))
    engine.dispose()


def test_get_engine_caches_and_reads_pool_settings(pgdb, monkeypatch) -> None:
    from worker.settings import get_settings

    monkeypatch.setenv("ENV_FILE", "/nonexistent/.env")
    monkeypatch.setenv("DATABASE_URL", pgdb.runtime_url)
    monkeypatch.setenv("DATABASE_POOL_SIZE", "3")
    monkeypatch.setenv("DATABASE_MAX_OVERFLOW", "1")
    monkeypatch.setenv("DATABASE_POOL_TIMEOUT", "7")
    get_settings.cache_clear()
    reset_engines()
    try:
        engine = get_engine()
        assert get_engine(pgdb.runtime_url) is engine
        assert (engine.pool.size(), engine.pool._max_overflow, engine.pool._timeout) == (3, 1, 7)
        assert event.contains(engine, "checkout", liveness._check_out)  # replaces pool_pre_ping (test_round_trips)
        postgres_spelling = get_engine(pgdb.runtime_url.replace("postgresql://", "postgres://", 1))
        assert postgres_spelling is engine
        with tenant_session(str(uuid.uuid4())) as db:  # default engine = DATABASE_URL
            assert db.get_bind() is engine
    finally:
        reset_engines()
        get_settings.cache_clear()


def test_forked_child_gets_fresh_connections_and_parent_keeps_its_own(pgdb) -> None:
    engine = get_engine(pgdb.runtime_url, pool_size=1, max_overflow=0)
    with engine.connect() as conn:
        parent_pid = conn.scalar(PID)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            dispose_engines_after_fork()  # what worker_process_init does; the fork hook already did it once
            fresh = engine.pool.checkedin() == 0
            with engine.connect() as conn:
                code = 0 if fresh and conn.scalar(PID) != parent_pid else 2
        finally:
            os.write(write, bytes([code]))
            os._exit(0)
    os.close(write)
    result = os.read(read, 1)
    os.close(read)
    os.waitpid(child, 0)
    assert result == b"\x00"
    with engine.connect() as conn:  # the child did not close the parent's socket
        assert conn.scalar(PID) == parent_pid
    reset_engines()


def test_set_tenant_inside_a_savepoint_is_refused(runtime_engine, seeded) -> None:
    first, second = uuid.uuid4(), uuid.uuid4()
    with tenant_session(first, None, engine=runtime_engine) as db:
        savepoint = db.begin_nested()
        with pytest.raises(TenantContextError, match="savepoint"):
            set_tenant(db, second, None)
        savepoint.rollback()
        # database and ORM still agree on the first tenant
        assert db.execute(CURRENT).first()[0] == str(first)
        assert db.info[TENANT_INFO_KEY].organization_id == str(first)


def test_connections_with_a_preset_tenant_are_refused(pgdb) -> None:
    """A default tenant (here via libpq options; ALTER ROLE ... SET works alike) would defeat fail-closed."""
    url = make_url(pgdb.runtime_url).update_query_dict(
        {"options": "-c app.current_organization=6f1c9a43-58f3-4a0e-9d7b-3c0f4a3c2b11"})
    engine = get_engine(url.render_as_string(hide_password=False))
    try:
        with pytest.raises(TenantContextError, match=r"start with app\.current_organization"), engine.connect():
            pass
    finally:
        reset_engines()
