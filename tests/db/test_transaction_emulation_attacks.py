"""Attacks on the transaction model that worker/db/prefixed_connection.py emulates over a driver kept in autocommit.

psycopg2 runs in autocommit under PrefixedConnection, which sends ``BEGIN``/``COMMIT``/``ROLLBACK`` itself and keeps
psycopg2's Python-level model (autocommit, characteristics, status, ``with``, ``reset()``, named cursors). A hostile
task (SQL and Python through a tenant session's raw DBAPI connection) and an unlucky operator (killed backends,
failing COMMITs) try to make a transaction mean something else than it means on plain psycopg2, to run a statement
with another tenant's state, or to hand the next borrower a connection in the wrong mode.

Where the expected behaviour is psycopg2's, the same scenario runs on a plain psycopg2 connection as well (the
reference) and both must agree. Real PostgreSQL; a test that passes means the attack failed.
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg2
import psycopg2.extensions
import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from tests.db.conftest import run_on_threads
from worker.db.engine import get_engine
from worker.db.models import TestSet
from worker.db.prefixed_connection import PrefixedConnection
from worker.db.session import tenant_session
from worker.errors import TenantContextError

PID = text("select pg_backend_pid()")
ORG = text("select tenant_guard.current_organization()::text")
CHARACTERISTICS = text("select current_setting('transaction_isolation'), current_setting('transaction_read_only'), "
                       "current_setting('transaction_deferrable')")
DEFAULTS = ("read committed", "off", "off")
_DRIVER = psycopg2.extensions.connection
IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE


@pytest.fixture
def tenants(two_tenants):  # type: ignore[no-untyped-def]
    """A throwaway database with tenants A (2 sets) and B (1 set), plus a table ``probe`` the runtime role may write:
    no row-level security, a unique key checked at COMMIT (deferred), for atomicity and failing COMMITs."""
    db, org_a, org_b = two_tenants
    runtime = make_url(db.runtime_url).username
    admin = create_engine(db.admin_url, poolclass=NullPool)
    with admin.begin() as conn:
        conn.execute(text("create table probe (x int not null, constraint probe_x unique (x) "
                          "deferrable initially deferred)"))
        conn.execute(text(f'grant select, insert, delete on probe to "{runtime}"'))
    admin.dispose()
    return db, org_a, org_b


def _probe_rows(db) -> list[int]:  # type: ignore[no-untyped-def]
    admin = create_engine(db.admin_url, poolclass=NullPool)
    with admin.connect() as conn:
        rows = sorted(conn.scalars(text("select x from probe")))
    admin.dispose()
    return rows


def _both(db, scenario: Callable[[psycopg2.extensions.connection], object]) -> tuple[object, object]:  # type: ignore[no-untyped-def]
    """``scenario`` on plain psycopg2 (the reference) and on the worker's connection class; the probe emptied before
    each."""
    results = []
    for factory in (_DRIVER, PrefixedConnection):
        admin = create_engine(db.admin_url, poolclass=NullPool)
        with admin.begin() as conn:
            conn.execute(text("delete from probe"))
        admin.dispose()
        connection = psycopg2.connect(db.runtime_url, connection_factory=factory)
        try:
            results.append(scenario(connection))
        finally:
            connection.close()
    return results[0], results[1]


# -- reset() ---------------------------------------------------------------------------------------------------------

def _reset_after(first: str) -> Callable[[psycopg2.extensions.connection], object]:
    def scenario(connection):  # type: ignore[no-untyped-def]
        cursor = connection.cursor()
        cursor.execute("insert into probe values (1)")
        if first:
            try:
                cursor.execute(first)
            except psycopg2.Error:
                pass
        connection.reset()  # psycopg2: rolls the transaction back, then DISCARD ALL
        seen = (connection.status, connection.get_transaction_status(), connection.autocommit)
        cursor = connection.cursor()
        cursor.execute("select count(*) from probe")
        counted = cursor.fetchone()[0]
        connection.commit()
        return seen, counted

    return scenario


@pytest.mark.parametrize("first", ["", "select 1/0"], ids=["open", "aborted"])
def test_reset_rolls_back_the_open_transaction_as_psycopg2_does(tenants, first: str) -> None:
    db, _org_a, _org_b = tenants
    reference, emulated = _both(db, _reset_after(first))
    assert reference == ((psycopg2.extensions.STATUS_READY, IDLE, False), 0)
    assert emulated == reference
    assert _probe_rows(db) == []


def _reset_inside_with(connection):  # type: ignore[no-untyped-def]
    connection.autocommit = True
    cursor = connection.cursor()
    with pytest.raises(ZeroDivisionError), connection:
        cursor.execute("insert into probe values (1)")
        connection.reset()
        cursor.execute("insert into probe values (2)")  # still inside the with block: in its transaction
        raise ZeroDivisionError
    cursor.execute("select coalesce(array_agg(x), '{}') from probe")
    return cursor.fetchone()[0], connection.autocommit


def _autocommit_after_reset_inside_with(connection):  # type: ignore[no-untyped-def]
    cursor = connection.cursor()
    with pytest.raises(ZeroDivisionError), connection:
        connection.reset()
        connection.autocommit = True
        cursor.execute("insert into probe values (1)")  # the with block still opens a transaction
        raise ZeroDivisionError
    cursor.execute("select coalesce(array_agg(x), '{}') from probe")
    return cursor.fetchone()[0], connection.autocommit


@pytest.mark.parametrize("scenario", [_reset_inside_with, _autocommit_after_reset_inside_with],
                         ids=lambda f: f.__name__)
def test_reset_inside_a_with_block_keeps_the_block_as_psycopg2_does(tenants, scenario) -> None:  # type: ignore[no-untyped-def]
    db, _org_a, _org_b = tenants
    reference, emulated = _both(db, scenario)
    assert reference[0] == []
    assert emulated == reference


def test_reset_by_a_task_in_a_tenant_session_keeps_nothing_of_its_transaction(tenants) -> None:
    db, org_a, _org_b = tenants
    engine = get_engine(db.runtime_url, pool_size=1, max_overflow=0)
    with tenant_session(org_a, engine=engine) as a:
        a.add(TestSet(name="undone by reset()"))
        a.flush()
        a.connection().connection.dbapi_connection.reset()
        assert a.scalar(select(func.count()).select_from(TestSet)) == 0  # no tenant any more: fails closed
    with tenant_session(org_a, engine=engine) as a:
        assert a.scalar(ORG) == org_a
        assert a.scalar(select(func.count()).select_from(TestSet)) == 2


# -- autocommit with characteristics: psycopg2 names them in the session's defaults ----------------------------------

def _autocommit_with(setup: str) -> Callable[[psycopg2.extensions.connection], object]:
    def scenario(connection):  # type: ignore[no-untyped-def]
        if setup == "set_session":
            connection.set_session(isolation_level="SERIALIZABLE", readonly=True, autocommit=True)
        elif setup == "set_isolation_level then readonly":
            connection.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
            connection.readonly = True
            connection.isolation_level = "REPEATABLE READ"
        elif setup == "properties then autocommit":
            connection.readonly = True
            connection.autocommit = True
        else:  # and back: out of autocommit psycopg2 gives the session its defaults back
            connection.set_session(isolation_level="SERIALIZABLE", readonly=True, autocommit=True)
            connection.set_session(isolation_level="DEFAULT", readonly="DEFAULT", autocommit=False)
        cursor = connection.cursor()
        cursor.execute("select current_setting('transaction_isolation'), current_setting('transaction_read_only')")
        seen = cursor.fetchone()
        try:
            cursor.execute("insert into probe values (1)")
            wrote = True
        except psycopg2.errors.ReadOnlySqlTransaction:
            wrote = False
        connection.rollback()
        return seen, wrote

    return scenario


@pytest.mark.parametrize("setup, expected", [
    ("set_session", (("serializable", "on"), False)),
    ("set_isolation_level then readonly", (("repeatable read", "on"), False)),
    ("properties then autocommit", (("read committed", "on"), False)),
    ("autocommit and back", (("read committed", "off"), True)),
])
def test_autocommit_statements_run_with_the_characteristics_asked_for(tenants, setup: str, expected) -> None:  # type: ignore[no-untyped-def]
    db, _org_a, _org_b = tenants
    reference, emulated = _both(db, _autocommit_with(setup))
    assert emulated == expected
    if setup == "properties then autocommit":
        # psycopg2 sends the SET only when a characteristic is set in autocommit, not when autocommit is switched on
        # after it: it then reports readonly=True and runs read-write. The emulation runs what it reports.
        assert reference == (("read committed", "off"), True)
    else:
        assert reference == expected


def test_sqlalchemy_autocommit_read_only_connection_refuses_writes(tenants) -> None:
    db, _org_a, _org_b = tenants
    engine = get_engine(db.runtime_url, pool_size=1, max_overflow=0)
    with engine.connect() as conn:  # the pooled connection carries a reset due: the SETs must outlive it
        pid = conn.scalar(PID)
        conn.execute(text("set statement_timeout = 4321"))
        conn.commit()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT", postgresql_readonly=True) as conn:
        assert conn.scalar(PID) == pid
        assert conn.scalar(text("select current_setting('transaction_read_only')")) == "on"
        assert conn.scalar(text("select current_setting('statement_timeout')")) == "0"  # the reset ran
        with pytest.raises(DBAPIError, match="read-only transaction"):
            conn.execute(text("insert into probe values (1)"))
    with engine.connect() as conn:  # the next borrower: a read-write transaction of the defaults
        assert conn.scalar(PID) == pid
        assert tuple(conn.execute(CHARACTERISTICS).one()) == DEFAULTS
        conn.execute(text("insert into probe values (2)"))
        conn.commit()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        assert conn.scalar(text("select current_setting('transaction_read_only')")) == "off"
        assert conn.scalar(text("select current_setting('default_transaction_read_only')")) == "off"
    assert _probe_rows(db) == [2]


def test_raw_autocommit_characteristics_hold_for_every_borrower_that_asks(tenants) -> None:
    """Each borrower's reset (RESET ALL) clears the session's defaults: what the class believes set must follow."""
    db, org_a, _org_b = tenants
    engine = get_engine(db.runtime_url, pool_size=1, max_overflow=0)
    for borrower in range(4):
        with engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            if borrower == 3:  # switched inside a with block, whose transaction carries the reset otherwise
                with raw:
                    raw.set_session(readonly=True, autocommit=True)
                    raw.cursor().execute("select 1")
            else:
                raw.set_session(readonly=True, autocommit=True)  # and back to the pool without undoing it
            cursor = raw.cursor()
            cursor.execute("select current_setting('transaction_read_only')")
            assert cursor.fetchone()[0] == "on"
            with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
                cursor.execute("insert into probe values (1)")
    with tenant_session(org_a, engine=engine) as a:
        assert tuple(a.execute(CHARACTERISTICS).one()) == DEFAULTS
        a.add(TestSet(name="written by A"))
    assert _probe_rows(db) == []


# -- a failing COMMIT of a transaction psycopg2 ran (named cursor) -------------------------------------------------

def _failed_commit_then_autocommit(named: bool) -> Callable[[psycopg2.extensions.connection], object]:
    def scenario(connection):  # type: ignore[no-untyped-def]
        cursor = connection.cursor()
        cursor.execute("insert into probe values (1), (1)")  # the deferred unique key fails at COMMIT
        if named:
            server_side = connection.cursor("server_side")
            server_side.execute("select x from probe")
            server_side.fetchall()
        with pytest.raises(psycopg2.errors.UniqueViolation):
            connection.commit()
        connection.autocommit = True
        cursor.execute("insert into probe values (2)")  # its own transaction, committed at once
        seen = (connection.status, connection.get_transaction_status())
        connection.rollback()  # nothing to roll back in autocommit
        cursor.execute("select array_agg(x) from probe")
        return seen, cursor.fetchone()[0]

    return scenario


@pytest.mark.parametrize("named", [True, False], ids=["named cursor", "plain"])
def test_after_a_failed_commit_autocommit_still_means_each_statement_its_own(tenants, named: bool) -> None:
    db, _org_a, _org_b = tenants
    reference, emulated = _both(db, _failed_commit_then_autocommit(named))
    assert reference == ((psycopg2.extensions.STATUS_READY, IDLE), [2])
    assert emulated == reference


def test_a_deferred_failure_at_commit_leaves_nothing_and_a_clean_connection(tenants) -> None:
    db, org_a, org_b = tenants
    engine = get_engine(db.runtime_url, pool_size=1, max_overflow=0)
    with pytest.raises(DBAPIError, match="probe_x"), tenant_session(org_a, engine=engine) as a:
        pid = a.scalar(PID)
        a.add(TestSet(name="lost with the failed commit"))
        a.flush()
        a.execute(text("insert into probe values (7), (7)"))
        for _row in a.execute(select(TestSet.name).execution_options(stream_results=True, yield_per=1)):
            pass  # psycopg2 runs the rest of this transaction (named cursor)
    with tenant_session(org_b, engine=engine) as b:
        raw = b.connection().connection.dbapi_connection
        assert b.scalar(PID) == pid
        assert _DRIVER.autocommit.__get__(raw) is True  # the worker's class runs the transactions again
        assert b.scalar(ORG) == org_b
        assert b.scalar(select(func.count()).select_from(TestSet)) == 1
    with tenant_session(org_a, engine=engine) as a:
        assert a.scalar(select(func.count()).select_from(TestSet)) == 2
    assert _probe_rows(db) == []


def _driver_refused_in_an_aborted_transaction(use: str, end: str) -> Callable[[psycopg2.extensions.connection],
                                                                               object]:
    def scenario(connection):  # type: ignore[no-untyped-def]
        cursor = connection.cursor()
        cursor.execute("insert into probe values (1)")
        with pytest.raises(psycopg2.errors.DivisionByZero):
            cursor.execute("select 1/0")
        with pytest.raises(psycopg2.Error):  # the transaction is aborted: psycopg2's BEGIN, or the DECLARE, fails
            if use == "named cursor":
                connection.cursor("server_side").execute("select 1")
            else:
                connection.lobject(0, "wb")
        aborted = connection.status
        getattr(connection, end)()  # ends the aborted transaction
        seen = (aborted, connection.status, connection.get_transaction_status())
        cursor.execute("insert into probe values (2)")
        connection.commit()
        cursor.execute("select array_agg(x) from probe")
        return seen, cursor.fetchone()[0]

    return scenario


@pytest.mark.parametrize("end", ["rollback", "reset"])
@pytest.mark.parametrize("use", ["named cursor", "large object"])
def test_rollback_ends_an_aborted_transaction_that_psycopg2_failed_to_take_over(tenants, use: str, end: str) -> None:
    db, _org_a, _org_b = tenants
    reference, emulated = _both(db, _driver_refused_in_an_aborted_transaction(use, end))
    assert reference == ((psycopg2.extensions.STATUS_BEGIN, psycopg2.extensions.STATUS_READY, IDLE), [2])
    assert emulated == reference


def _end_before_the_named_cursor_runs(end: str) -> Callable[[psycopg2.extensions.connection], object]:
    def scenario(connection):  # type: ignore[no-untyped-def]
        cursor = connection.cursor()
        cursor.execute("insert into probe values (1)")
        connection.cursor("not_yet_executed")  # psycopg2 takes the transaction over, but has sent nothing yet
        getattr(connection, end)()
        seen = (connection.status, connection.get_transaction_status())
        cursor.execute("insert into probe values (2)")
        connection.rollback()
        cursor.execute("select coalesce(array_agg(x), '{}') from probe")
        return seen, cursor.fetchone()[0]

    return scenario


@pytest.mark.parametrize("end, rows", [("commit", [1]), ("rollback", [])])
def test_commit_and_rollback_after_creating_a_named_cursor_end_the_transaction(tenants, end: str, rows) -> None:  # type: ignore[no-untyped-def]
    db, _org_a, _org_b = tenants
    reference, emulated = _both(db, _end_before_the_named_cursor_runs(end))
    assert reference == ((psycopg2.extensions.STATUS_READY, IDLE), rows)
    assert emulated == reference


def _autocommit_after_creating_a_named_cursor(connection):  # type: ignore[no-untyped-def]
    connection.cursor("never_executed")  # no transaction yet: psycopg2 lets autocommit be switched on
    connection.autocommit = True
    cursor = connection.cursor()
    cursor.execute("insert into probe values (1)")
    seen = (connection.status, connection.get_transaction_status())
    connection.rollback()
    cursor.execute("select coalesce(array_agg(x), '{}') from probe")
    return seen, cursor.fetchone()[0]


def test_autocommit_switched_on_after_creating_a_named_cursor_holds(tenants) -> None:
    db, _org_a, _org_b = tenants
    reference, emulated = _both(db, _autocommit_after_creating_a_named_cursor)
    assert reference == ((psycopg2.extensions.STATUS_READY, IDLE), [1])
    assert emulated == reference


# -- SQLAlchemy's isolation level and read-only options ---------------------------------------------------------------

@pytest.mark.parametrize("options, expected", [
    ({"isolation_level": "SERIALIZABLE"}, ("serializable", "off", "off")),
    ({"isolation_level": "REPEATABLE READ"}, ("repeatable read", "off", "off")),
    ({"postgresql_readonly": True}, ("read committed", "on", "off")),
    ({"isolation_level": "SERIALIZABLE", "postgresql_readonly": True, "postgresql_deferrable": True},
     ("serializable", "on", "on")),
])
def test_sqlalchemy_characteristics_are_the_servers_and_go_back_with_the_connection(tenants, options,
                                                                                     expected) -> None:  # type: ignore[no-untyped-def]
    db, org_a, org_b = tenants
    engine = get_engine(db.runtime_url, pool_size=1, max_overflow=0)
    with tenant_session(org_b, engine=engine) as b:
        b.execute(text("set default_transaction_isolation = 'read uncommitted'"))
    for stream in (False, True):  # the first statement a plain one, or a named cursor
        with tenant_session(org_a, engine=engine) as a:
            a.connection(execution_options=options)
            statement = text("select current_setting('transaction_isolation'), "
                             "current_setting('transaction_read_only'), current_setting('transaction_deferrable'), "
                             "name from test_set")
            if stream:  # yield_per alone would stream too
                statement = statement.execution_options(stream_results=True, yield_per=1)
            rows = a.execute(statement).all()
            assert sorted(tuple(row) for row in rows) == [(*expected, "set 0"), (*expected, "set 1")]
            assert tuple(a.execute(CHARACTERISTICS).one()) == expected
            assert a.scalar(ORG) == org_a
        with tenant_session(org_b, engine=engine) as b:
            assert tuple(b.execute(CHARACTERISTICS).one()) == DEFAULTS
            b.add(TestSet(name="written by B"))


def test_an_autocommit_option_on_a_tenant_session_is_refused_and_not_kept(tenants) -> None:
    db, org_a, _org_b = tenants
    engine = get_engine(db.runtime_url, pool_size=1, max_overflow=0)
    with pytest.raises(TenantContextError), tenant_session(org_a, engine=engine) as a:
        a.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
    with pytest.raises(ZeroDivisionError), engine.connect() as conn:  # atomic again
        conn.execute(text("insert into probe values (1)"))
        raise ZeroDivisionError
    assert _probe_rows(db) == []


# -- raw access in the middle of a tenant transaction ----------------------------------------------------------------

@pytest.mark.parametrize("change", ["set_isolation_level", "rollback", "commit", "autocommit after commit"])
def test_raw_transaction_control_mid_session_fails_closed(tenants, change: str) -> None:
    db, org_a, org_b = tenants
    engine = get_engine(db.runtime_url, pool_size=1, max_overflow=0)
    with tenant_session(org_a, engine=engine) as a:
        assert a.scalar(select(func.count()).select_from(TestSet)) == 2
        raw = a.connection().connection.dbapi_connection
        if change == "set_isolation_level":
            raw.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_SERIALIZABLE)
        elif change == "rollback":
            raw.rollback()
        elif change == "commit":
            raw.commit()
        else:
            raw.commit()
            raw.autocommit = True
        # The transaction that carried A's entry has ended: what runs now has no tenant, not another one.
        assert a.scalar(text("select count(*) from test_set")) == 0
        assert a.scalar(ORG) is None
    with tenant_session(org_b, engine=engine) as b:
        assert tuple(b.execute(CHARACTERISTICS).one()) == DEFAULTS
        assert b.scalar(ORG) == org_b
        assert b.scalar(text("select count(*) from test_set")) == 1


def test_a_savepoint_rollback_undoes_only_its_part(tenants) -> None:
    db, org_a, _org_b = tenants
    engine = get_engine(db.runtime_url, pool_size=1, max_overflow=0)
    with tenant_session(org_a, engine=engine) as a:
        with a.begin_nested():
            a.add(TestSet(name="kept"))
        with pytest.raises(ZeroDivisionError), a.begin_nested():
            a.add(TestSet(name="undone"))
            a.flush()
            streamed = a.scalars(select(TestSet.name).execution_options(stream_results=True, yield_per=1)).all()
            assert sorted(streamed) == ["kept", "set 0", "set 1", "undone"]  # psycopg2 takes over in a savepoint
            raise ZeroDivisionError
        for _row in a.execute(select(TestSet.name).execution_options(stream_results=True, yield_per=1)):
            pass
        with a.begin_nested():
            a.execute(text("insert into probe values (4)"))
        assert a.scalar(ORG) == org_a
    with tenant_session(org_a, engine=engine) as a:
        assert sorted(a.scalars(select(TestSet.name))) == ["kept", "set 0", "set 1"]
    assert _probe_rows(db) == [4]


# -- the operator kills the backend between the first message and COMMIT ----------------------------------------

@pytest.mark.parametrize("stream", [False, True], ids=["class-run", "driver-run"])
def test_a_backend_killed_before_commit_loses_the_transaction_loudly(tenants, stream: bool) -> None:
    db, org_a, org_b = tenants
    engine = get_engine(db.runtime_url, pool_size=1, max_overflow=0)
    admin = create_engine(db.admin_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with pytest.raises(DBAPIError), tenant_session(org_a, engine=engine) as a:
        a.add(TestSet(name="never committed"))
        a.flush()
        if stream:
            list(a.execute(select(TestSet.name).execution_options(stream_results=True, yield_per=1)))
        pid = a.scalar(PID)
        with admin.connect() as conn:
            assert conn.scalar(text("select pg_terminate_backend(:p, 5000)"), {"p": pid})
    admin.dispose()
    with tenant_session(org_b, engine=engine) as b:
        assert b.scalar(PID) != pid
        assert b.scalar(ORG) == org_b
        assert tuple(b.execute(CHARACTERISTICS).one()) == DEFAULTS
    with tenant_session(org_a, engine=engine) as a:
        assert a.scalar(select(func.count()).select_from(TestSet)) == 2


# -- threads: one pooled connection, two tenants, different characteristics ------------------------------------------

def test_two_tenants_with_their_own_characteristics_share_one_pooled_connection(tenants) -> None:
    db, org_a, org_b = tenants
    engine = get_engine(db.runtime_url, pool_size=1, max_overflow=0, pool_timeout=30)
    plans = {org_a: ({"isolation_level": "SERIALIZABLE", "postgresql_readonly": True}, ("serializable", "on", "off"),
                     2),
             org_b: ({"isolation_level": "REPEATABLE READ"}, ("repeatable read", "off", "off"), 1)}
    failures: list[str] = []

    def run(org: str) -> None:
        options, expected, count = plans[org]
        try:
            for i in range(30):
                with tenant_session(org, engine=engine) as s:
                    if i % 3:
                        s.connection(execution_options=options)
                    raw = s.connection().connection.dbapi_connection
                    if i % 5 == 0:
                        raw.set_session(readonly=True, autocommit=True)  # refused for tenants later on
                        raw.set_session(readonly=False, autocommit=False)
                    seen = (tuple(s.execute(CHARACTERISTICS).one()), s.scalar(ORG),
                            s.scalar(select(func.count()).select_from(TestSet)))
                    want = (expected if i % 3 else DEFAULTS, org, count)
                    if i % 5 == 0 and i % 3:
                        want = ((expected[0], "off", "off"), org, count)
                    if seen != want:
                        failures.append(f"{org} round {i}: {seen} != {want}")
        except Exception as exc:  # reported below, from the main thread
            failures.append(f"{org}: {exc!r}")

    run_on_threads(run, (org_a, org_b))
    assert failures == []


# -- the plain transaction model --------------------------------------------------------------------------------

def _atomicity(connection):  # type: ignore[no-untyped-def]
    cursor = connection.cursor()
    cursor.execute("insert into probe values (1)")
    cursor.execute("insert into probe values (2)")
    connection.rollback()
    cursor.execute("insert into probe values (3)")
    connection.commit()
    with connection:
        cursor.execute("insert into probe values (4)")
    with pytest.raises(ZeroDivisionError), connection:
        cursor.execute("insert into probe values (5)")
        raise ZeroDivisionError
    connection.autocommit = True
    cursor.execute("insert into probe values (6)")
    connection.rollback()
    with pytest.raises(ZeroDivisionError), connection:  # a transaction even in autocommit
        cursor.execute("insert into probe values (7)")
        raise ZeroDivisionError
    connection.autocommit = False
    named = connection.cursor("named")
    named.execute("select x from probe")
    named.fetchall()
    cursor.execute("insert into probe values (8)")
    connection.rollback()
    cursor.execute("select array_agg(x order by x), current_setting('transaction_isolation') from probe")
    return cursor.fetchone(), connection.status


def test_commit_rollback_with_block_and_autocommit_mean_what_they_mean_on_psycopg2(tenants) -> None:
    db, _org_a, _org_b = tenants
    reference, emulated = _both(db, _atomicity)
    assert reference == (([3, 4, 6], "read committed"), psycopg2.extensions.STATUS_BEGIN)
    assert emulated == reference


def test_a_new_borrower_never_inherits_a_driver_run_transaction(tenants) -> None:
    db, org_a, org_b = tenants
    engine = get_engine(db.runtime_url, pool_size=1, max_overflow=0)
    with tenant_session(org_a, engine=engine) as a:
        raw = a.connection().connection.dbapi_connection
        named = raw.cursor("left_open", withhold=True)
        named.execute("select name from test_set")
        named.fetchone()
        raw.lobject(0, "wb").write(b"x")
        # no commit of its own: the session's commit ends it
    with tenant_session(org_b, engine=engine) as b:
        raw = b.connection().connection.dbapi_connection
        assert _DRIVER.autocommit.__get__(raw) is True
        assert b.scalar(ORG) == org_b
        assert b.scalar(text("select count(*) from pg_cursors")) == 0
        assert b.scalar(text("select count(*) from test_set")) == 1



def test_a_cursor_class_a_task_set_on_the_connection_does_not_reach_the_next_borrower(tenants) -> None:
    """psycopg2 keeps ``cursor_factory`` on the connection object; SQLAlchemy's cursors come from it."""
    import psycopg2.extras

    db, org_a, org_b = tenants
    engine = get_engine(db.runtime_url, pool_size=1, max_overflow=0)
    with tenant_session(org_a, engine=engine) as a:
        pid = a.scalar(PID)
        a.connection().connection.dbapi_connection.cursor_factory = psycopg2.extras.RealDictCursor
    with tenant_session(org_b, engine=engine) as b:
        assert b.scalar(PID) == pid
        assert tuple(b.execute(text("select tenant_guard.current_organization()::text, 1")).one()) == (org_b, 1)
        assert b.scalar(select(func.count()).select_from(TestSet)) == 1
