"""What a tenant transaction costs on the wire, and that the cheaper path still hands every borrower a clean,
live connection. Round trips are counted as the query messages psycopg2 sends to a real PostgreSQL through a
counting proxy (tests/support/pg_wire.py)."""

from __future__ import annotations

import uuid

import psycopg2.extras
import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from tests.db.conftest import seed
from tests.support.pg_wire import counting_queries
from worker.db import liveness
from worker.db.engine import get_engine, reset_engines
from worker.db.models import TestSet, User
from worker.db.session import tenant_session
from worker.errors import TenantConflictError

PID = text("select pg_backend_pid()")


@pytest.fixture
def tenant_db(make_database):  # type: ignore[no-untyped-def]
    db = make_database()
    org = str(uuid.uuid4())
    owner = create_engine(db.owner_url, poolclass=NullPool)
    seed(owner, {org: [1, 1]})
    owner.dispose()
    yield db, org
    reset_engines()


def _one_query_tenant_transaction(engine, org: str) -> int:  # type: ignore[no-untyped-def]
    with tenant_session(org, engine=engine) as db:
        return db.scalar(select(func.count()).select_from(TestSet))


def test_a_tenant_transaction_costs_one_round_trip_less_than_the_same_query_without_rls(tenant_db) -> None:
    db, org = tenant_db
    with counting_queries(db.runtime_url) as wire:
        engine = get_engine(wire.url(db.runtime_url), pool_size=1, max_overflow=0)
        plain = create_engine(wire.url(db.admin_url), pool_size=1, max_overflow=0)
        assert _one_query_tenant_transaction(engine, org) == 2  # opens and registers the pooled connection
        with Session(plain) as session, session.begin():  # likewise for the plain engine
            session.scalar(select(func.count()).select_from(TestSet).where(TestSet.organization_id == org))
        wire.take()
        for _ in range(3):  # every later transaction on the pooled connection, not only the first
            assert _one_query_tenant_transaction(engine, org) == 2
            tenant = wire.take()
            with Session(plain) as session, session.begin():
                assert session.scalar(select(func.count()).select_from(TestSet)
                                      .where(TestSet.organization_id == org)) == 2
            baseline = wire.take()
            assert len(baseline) == 3, baseline  # BEGIN, the query, COMMIT
            # BEGIN + session reset + tenant_guard.enter + the query in one message, then COMMIT: no pre-ping, no
            # DISCARD ALL, no round trip for the tenant, none for BEGIN (revision 0006 and before: 6)
            assert len(tenant) == 2, tenant
            assert tenant[1] == "COMMIT", tenant
            begin, reset, chain, entry, query = (tenant[0].index(part) for part in (
                "BEGIN ISOLATION LEVEL READ COMMITTED READ WRITE NOT DEFERRABLE;", "DISCARD TEMP", "COMMIT AND CHAIN",
                "tenant_guard.enter", "count("))
            assert begin == 0 and begin < reset < chain < entry < query, tenant[0]
        plain.dispose()


def test_the_tenant_entry_reaches_every_way_a_statement_can_be_sent(tenant_db) -> None:
    db, org = tenant_db
    engine = get_engine(db.runtime_url, pool_size=1, max_overflow=0)
    count = "select count(*) from test_set"
    with tenant_session(org, engine=engine) as session:
        with pytest.raises(DBAPIError):
            session.execute(text("select 1/0"))  # the message with the entry fails as a whole ...
        session.rollback()
        assert session.scalar(text(count)) == 2  # ... and the next transaction enters again
        session.commit()
        raw = session.connection().connection.dbapi_connection  # a task's own cursor, first thing in a transaction
        cursor = raw.cursor(cursor_factory=psycopg2.extras.RealDictCursor)
        cursor.execute(count)
        assert cursor.fetchone()["count"] == 2
        cursor.close()
        session.commit()
        session.connection()
        cursor = raw.cursor()
        cursor.executemany("select set_config('application_name', %s || (" + count + "), false)", [("n",)])
        assert session.scalar(text("select current_setting('application_name')")) == "n2"


def test_a_user_of_another_organization_is_refused_with_the_first_statement(make_database) -> None:
    db = make_database()
    org_a, org_b, user_b = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    owner = create_engine(db.owner_url, poolclass=NullPool)
    seed(owner, {org_a: [1], org_b: [1]})
    with tenant_session(org_b, engine=owner) as session:
        session.add(User(id=uuid.UUID(user_b), organization_id=uuid.UUID(org_b), email="b@example.org"))
    owner.dispose()
    engine = get_engine(db.runtime_url, pool_size=1, max_overflow=0)
    with pytest.raises(TenantConflictError, match="user of another organization"), \
            tenant_session(org_a, user_b, engine=engine) as session:
        session.scalar(select(func.count()).select_from(TestSet))
    with tenant_session(org_a, str(uuid.uuid4()), engine=engine) as session:  # an unknown user passes
        assert session.scalar(select(func.count()).select_from(TestSet)) == 1


def test_a_connection_whose_backend_was_terminated_is_replaced_at_checkout(tenant_db) -> None:
    db, org = tenant_db
    engine = get_engine(db.runtime_url, pool_size=1, max_overflow=0)
    with engine.connect() as conn:
        pid = conn.scalar(PID)
    admin = create_engine(db.admin_url, poolclass=NullPool)
    with admin.connect() as conn:
        assert conn.scalar(text("select pg_terminate_backend(:p)"), {"p": pid})
        conn.execute(text("select pg_sleep(0.2)"))  # the backend's goodbye reaches the pooled socket
    admin.dispose()
    with tenant_session(org, engine=engine) as session:  # no error for the task: the pool reconnected
        assert session.scalar(PID) != pid
        assert session.scalar(select(func.count()).select_from(TestSet)) == 2


def test_without_the_checkout_check_the_terminated_connection_fails_the_task(tenant_db) -> None:
    """The counterpart of the test above: the check is what saves it."""
    db, org = tenant_db
    engine = get_engine(db.runtime_url, pool_size=1, max_overflow=0, check_liveness=False)
    with engine.connect() as conn:
        pid = conn.scalar(PID)
    admin = create_engine(db.admin_url, poolclass=NullPool)
    with admin.connect() as conn:
        conn.execute(text("select pg_terminate_backend(:p)"), {"p": pid})
        conn.execute(text("select pg_sleep(0.2)"))
    admin.dispose()
    with pytest.raises(DBAPIError), tenant_session(org, engine=engine) as session:
        session.scalar(PID)


def test_an_idle_connection_is_pinged_at_checkout(tenant_db, monkeypatch) -> None:
    db, org = tenant_db
    with counting_queries(db.runtime_url) as wire:
        engine = get_engine(wire.url(db.runtime_url), pool_size=1, max_overflow=0)
        _one_query_tenant_transaction(engine, org)
        wire.take()
        monkeypatch.setattr(liveness, "PING_AFTER_IDLE_SECONDS", 0.0)
        _one_query_tenant_transaction(engine, org)
        sent = wire.take()
        # BEGIN + reset + ping, COMMIT, then the transaction itself
        assert sent[0].startswith("BEGIN ") and "select 1" in sent[0], sent
        assert len(sent) == 2 + 2, sent


def _leave_state_behind(engine) -> int:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        pid = conn.scalar(PID)
        conn.execute(text("set statement_timeout = 4321"))
        conn.execute(text("prepare left_behind as select 1"))
        conn.execute(text("select pg_advisory_lock(4711)"))
        conn.commit()
    return pid


def _assert_clean(conn, pid: int) -> None:  # type: ignore[no-untyped-def]
    assert conn.scalar(PID) == pid  # the same pooled connection
    assert conn.scalar(text("select current_setting('statement_timeout')")) == "0"
    assert conn.scalar(text("select count(*) from pg_prepared_statements")) == 0
    assert conn.scalar(text("select count(*) from pg_locks where locktype = 'advisory' "
                            "and pid = pg_backend_pid()")) == 0


def test_the_reset_is_sent_again_when_the_transaction_that_carried_it_rolls_back(tenant_db) -> None:
    db, _org = tenant_db
    engine = get_engine(db.runtime_url, pool_size=1, max_overflow=0)
    pid = _leave_state_behind(engine)
    with engine.connect() as conn:
        assert conn.scalar(text("select 1")) == 1  # carried the reset
        with pytest.raises(DBAPIError):
            conn.execute(text("select 1/0"))
        conn.rollback()  # undoes RESET ALL and the rest of the reset's transactional part
        _assert_clean(conn, pid)


@pytest.mark.parametrize("first_use", ["named cursor", "cursor class of the caller", "executemany"])
def test_statements_that_cannot_carry_the_reset_get_it_first(tenant_db, first_use: str) -> None:
    db, _org = tenant_db
    engine = get_engine(db.runtime_url, pool_size=1, max_overflow=0)
    pid = _leave_state_behind(engine)
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        if first_use == "named cursor":
            cursor = raw.cursor("first_use")
            cursor.execute("select current_setting('statement_timeout')")
            assert cursor.fetchone()[0] == "0"
        elif first_use == "cursor class of the caller":
            cursor = raw.cursor(cursor_factory=psycopg2.extras.RealDictCursor)
            cursor.execute("select current_setting('statement_timeout') as timeout")
            assert cursor.fetchone()["timeout"] == "0"
        else:
            cursor = raw.cursor()
            cursor.executemany("select set_config('application_name', %s || current_setting('statement_timeout'), "
                               "false)", [("a",), ("b",)])
            cursor.close()
            # Seen by the executemany itself: the reset went first (a later reset would clear application_name).
            assert conn.scalar(text("select current_setting('application_name')")) == "b0"
        cursor.close()
        _assert_clean(conn, pid)


def test_transaction_defaults_a_task_changes_do_not_reach_the_next_borrower(tenant_db) -> None:
    """The reset runs inside the next borrower's transaction, after BEGIN has taken the session's defaults."""
    db, org = tenant_db
    engine = get_engine(db.runtime_url, pool_size=1, max_overflow=0)
    with tenant_session(org, engine=engine) as previous:
        pid = previous.scalar(PID)
        previous.execute(text("set default_transaction_read_only = on"))
        previous.execute(text("set default_transaction_isolation = 'serializable'"))
        previous.execute(text("set default_transaction_deferrable = on"))
    for _ in range(2):  # a rolled-back first transaction must not bring them back either
        with pytest.raises(ZeroDivisionError), tenant_session(org, engine=engine) as session:
            assert session.scalar(PID) == pid
            assert session.scalar(text("select current_setting('transaction_read_only')")) == "off"
            assert session.scalar(text("select current_setting('transaction_isolation')")) == "read committed"
            session.add(TestSet(name="written by the next borrower"))
            session.flush()
            raise ZeroDivisionError  # roll back
    with tenant_session(org, engine=engine) as session:
        session.add(TestSet(name="written by the next borrower"))
    with tenant_session(org, engine=engine) as session:
        assert session.scalar(select(func.count()).select_from(TestSet)) == 3
