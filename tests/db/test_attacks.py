"""Attacks by a task's own SQL on other tenants: session state left on pooled connections, forged tenant
settings, other sessions' statements. Each test runs the attack as the runtime role on a real PostgreSQL."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, ProgrammingError
from sqlalchemy.pool import NullPool

from worker.db import MigrationError
from worker.db.engine import get_engine
from worker.db.migrate import migrate
from worker.db.models import TestSet
from worker.db.session import tenant_session

PID = text("select pg_backend_pid()")


def _admin(db):  # type: ignore[no-untyped-def]
    return create_engine(db.admin_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")


def _runtime(db) -> str:  # type: ignore[no-untyped-def]
    return make_url(db.runtime_url).username


def _admin_exec(db, *statements: str) -> None:  # type: ignore[no-untyped-def]
    engine = _admin(db)
    with engine.connect() as conn:
        for statement in statements:
            conn.execute(text(statement))
    engine.dispose()


# -- 1. session state on pooled connections ---------------------------------------------------------------

def test_migrate_revokes_temporary_from_public_and_the_runtime_role(make_database) -> None:
    db = make_database(migrated=False)
    # What CREATE DATABASE gives PUBLIC by default (provisioning revoked it; put it back), plus a direct grant.
    _admin_exec(db, f'grant temporary on database "{db.name}" to public',
                f'grant temporary on database "{db.name}" to "{_runtime(db)}"')
    migrate(db.owner_url, db.runtime_url)
    engine = create_engine(db.runtime_url, poolclass=NullPool)
    with engine.connect() as conn:
        assert not conn.scalar(text("select has_database_privilege(current_user, current_database(), 'TEMPORARY')"))
        with pytest.raises(ProgrammingError) as caught:
            conn.execute(text("create temp table test_set (organization_id uuid, name text)"))
        assert caught.value.orig.pgcode == "42501"
    engine.dispose()


def test_migrate_refuses_temporary_granted_by_someone_else(make_database, admin_role) -> None:
    db = make_database(migrated=False)
    helper = admin_role("NOSUPERUSER")
    _admin_exec(db, f'grant temporary on database "{db.name}" to "{helper}" with grant option',
                f'set role "{helper}"', f'grant temporary on database "{db.name}" to "{_runtime(db)}"', "reset role")
    try:
        with pytest.raises(MigrationError, match="may create temporary tables"):
            migrate(db.owner_url, db.runtime_url)
    finally:  # so that the role can be dropped
        _admin_exec(db, f'revoke temporary on database "{db.name}" from "{_runtime(db)}" cascade',
                    f'revoke all on database "{db.name}" from "{helper}" cascade')


def test_a_connection_comes_back_from_a_task_as_clean_as_new(two_tenants) -> None:
    db, org_a, org_b = two_tenants
    # Worst case: TEMPORARY granted again by hand after migrate. The pool reset must still clean up.
    _admin_exec(db, f'grant temporary on database "{db.name}" to "{_runtime(db)}"')
    engine = get_engine(db.runtime_url, pool_size=1, max_overflow=0)
    with tenant_session(org_a, engine=engine) as a:
        pid = a.scalar(PID)
        a.execute(text("create temp table test_set (organization_id uuid, name text)"))
        a.execute(text("set search_path = pg_temp, public"))
        a.execute(text("insert into test_set values (:b, 'planted by A')"), {"b": org_b})
        a.execute(text("select set_config('app.current_organization', :b, false)"), {"b": org_b})
        a.execute(text("set statement_timeout = 1234"))
        a.execute(text("prepare a_statement as select 1"))
        a.execute(text("listen a_channel"))
        a.execute(text("select pg_advisory_lock(42)"))
    with tenant_session(org_b, engine=engine) as b:
        assert b.scalar(PID) == pid  # the same pooled connection
        assert b.scalar(text("select to_regclass('pg_temp.test_set')")) is None
        assert b.scalar(text("select current_setting('search_path')")) == "public, pg_temp"
        assert b.scalar(text("select current_setting('statement_timeout')")) == "0"
        assert b.scalar(text("select count(*) from pg_prepared_statements")) == 0
        assert b.scalar(text("select count(*) from pg_listening_channels()")) == 0  # UNLISTEN committed already
        assert b.scalar(text("select count(*) from pg_locks where locktype = 'advisory' "
                             "and pid = pg_backend_pid()")) == 0
        assert [s.name for s in b.scalars(select(TestSet))] == ["set 0"]  # B's own row, from public.test_set
        b.add(TestSet(name="written by B"))
    with engine.connect() as plain:  # no tenant at all: the session-level set_config is gone
        assert plain.scalar(PID) == pid
        assert plain.scalar(text("select current_setting('app.current_organization', true)")) in ("", None)
        assert plain.scalar(text("select count(*) from pg_listening_channels()")) == 0
        assert plain.scalar(select(func.count()).select_from(TestSet)) == 0
    admin = _admin(db)
    with admin.connect() as conn:
        assert conn.scalar(text("select count(*) from public.test_set where organization_id = :b"),
                           {"b": org_b}) == 2  # B's write reached the real table
    admin.dispose()


def test_public_comes_before_a_temporary_table_even_without_the_reset(two_tenants) -> None:
    db, org_a, org_b = two_tenants
    _admin_exec(db, f'grant temporary on database "{db.name}" to "{_runtime(db)}"')
    engine = get_engine(db.runtime_url, pool_size=1, max_overflow=0, reset_session_state=False)
    with tenant_session(org_a, engine=engine) as a:
        a.execute(text("create temp table test_set (organization_id uuid, name text)"))
        a.execute(text("insert into pg_temp.test_set values (:b, 'planted by A')"), {"b": org_b})
    with tenant_session(org_b, engine=engine) as b:
        assert b.scalar(text("select to_regclass('pg_temp.test_set')")) is not None  # left behind, but ...
        assert [s.name for s in b.scalars(select(TestSet))] == ["set 0"]  # ... public.test_set is found first


# -- 2. the tenant setting cannot be forged from SQL --------------------------------------------------------

def test_task_sql_cannot_switch_to_another_organization(two_tenants) -> None:
    db, org_a, org_b = two_tenants
    engine = get_engine(db.runtime_url, pool_size=1, max_overflow=0)
    with tenant_session(org_a, engine=engine) as a:
        assert a.scalar(text("select count(*) from test_set")) == 2
        seal = a.scalar(text("select current_setting('app.tenant_seal', true)"))
        for forge in ("select set_config('app.current_organization', :b, true)",
                      "select set_config('app.current_organization', :b, false)"):
            a.execute(text(forge), {"b": org_b})
            assert a.scalar(text("select count(*) from test_set")) == 0, forge  # neither B's rows nor A's
            with pytest.raises(ProgrammingError) as caught, a.begin_nested():
                a.execute(text("insert into test_set (organization_id, name) values (:b, 'x')"), {"b": org_b})
            assert caught.value.orig.pgcode == "42501"
        a.execute(text("select set_config('app.current_organization', :a, true)"), {"a": org_a})
        assert a.scalar(text("select count(*) from test_set")) == 2  # own setting with its own seal: fine
    with tenant_session(org_a, engine=engine) as a:  # a seal is worth nothing in another transaction
        a.execute(text("select set_config('app.tenant_seal', :s, true)"), {"s": seal})
        assert a.scalar(text("select count(*) from test_set")) == 0


def test_task_sql_cannot_learn_the_connection_key(two_tenants) -> None:
    db, org_a, org_b = two_tenants
    engine = get_engine(db.runtime_url, pool_size=1, max_overflow=0)
    attempts = {
        "select tenant_guard.register_connection()": "42501",  # once per backend, and the worker came first
        "select * from tenant_guard.connection_key": "42501",
        "select tenant_guard.enter(:b, '', repeat('0', 64))": "42501",
    }
    for statement, code in attempts.items():
        with pytest.raises(DBAPIError) as caught, tenant_session(org_a, engine=engine) as a:
            a.execute(text(statement), {"b": org_b})
        assert caught.value.orig.pgcode == code, statement
    with tenant_session(org_a, engine=engine) as a:  # A's proof does not open B
        from worker.db.guard import KEY_INFO, proof

        key = a.connection().info[KEY_INFO]
        with pytest.raises(DBAPIError, match="tenant proof rejected"):
            a.execute(text("select tenant_guard.enter(:b, '', :p)"), {"b": org_b, "p": proof(key, org_a, "")})


# -- 3. other sessions' statements ----------------------------------------------------------------------------

def test_runtime_role_cannot_read_other_sessions_statements(pgdb) -> None:
    engine = create_engine(pgdb.runtime_url, poolclass=NullPool)
    with engine.connect() as victim, engine.connect() as spy:
        victim.execute(text("select 'secret-literal-4711'"))
        victim_pid = victim.scalar(PID)
        for probe in ("select query from pg_stat_activity where pid = :p",
                      "select query from pg_stat_get_activity(:p)",
                      "select pg_stat_get_backend_activity(b) from pg_stat_get_backend_idset() b "
                      "where pg_stat_get_backend_pid(b) = :p"):
            with pytest.raises(ProgrammingError) as caught:
                spy.execute(text(probe), {"p": victim_pid})
            assert caught.value.orig.pgcode == "42501", probe
            spy.rollback()
    engine.dispose()


def test_migrate_warns_when_statements_are_visible(make_database, caplog) -> None:
    db = make_database(migrated=False)
    _admin_exec(db, "grant select on pg_catalog.pg_stat_activity to public")
    with caplog.at_level(logging.WARNING, logger="worker.db.migrate"):
        migrate(db.owner_url, db.runtime_url)
    assert "can read other sessions' statements through pg_catalog.pg_stat_activity" in caplog.text
    caplog.clear()
    _admin_exec(db, "revoke select on pg_catalog.pg_stat_activity from public")
    with caplog.at_level(logging.WARNING, logger="worker.db.migrate"):
        migrate(db.owner_url, db.runtime_url)
    assert "other sessions' statements" not in caplog.text
