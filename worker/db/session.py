"""Tenant-scoped sessions: ``app.current_organization`` / ``app.current_user`` set transaction-locally.

Why transaction-local (``set_config(..., true)``) and re-applied at every transaction begin: a session-level
``SET`` survives commit and close, so the next borrower of a pooled connection would inherit the tenant. A
transaction-local value dies with the transaction, so a connection goes back to the pool clean, and the
``after_begin`` listener puts the tenant back for each new transaction of the same Session (after a commit
inside a ``tenant_session`` block, for instance). An AUTOCOMMIT connection would drop the value after each
statement, so it is refused.

Since revision 0002 the settings are written by ``tenant_guard.enter`` with a proof made from the connection's
key (``worker/db/guard.py``), so that SQL which sets ``app.current_organization`` itself gets no rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, event
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, SessionTransaction

from worker.db import criteria, guard
from worker.db.criteria import TENANT_INFO_KEY, session_tenant
from worker.db.engine import get_engine, refuse_autocommit
from worker.db.prefixed_connection import PrefixedConnection
from worker.errors import TenantContextError
from worker.tenant.context import Tenant, normalize_id

__all__ = ["TENANT_INFO_KEY", "session_tenant", "set_tenant", "tenant_session"]

# Set while a Session's root transaction holds a connection, so that set_tenant knows to apply at once.
_CONNECTED_KEY = "worker.db.tenant_connected"


def _tenant(organization_id: object, user_id: object) -> Tenant:
    org = normalize_id(organization_id, "organization_id")  # InvalidTenantError on a malformed id
    if org is None:
        raise TenantContextError("a tenant-scoped database session needs an organization_id")
    return Tenant(org, normalize_id(user_id, "user_id"))


def _apply(connection: Connection, tenant: Tenant) -> None:
    refuse_autocommit(connection)
    # tenant_guard.enter checks the proof and sets both settings plus the seal that the policies require
    # (revision 0002; see worker/db/guard.py). On the worker's own connections it travels in front of the
    # transaction's next statement, in the same message, so it costs no round trip of its own
    # (worker/db/prefixed_connection.py); anywhere else it is a statement of its own.
    parameters = guard.enter_parameters(connection, tenant.organization_id, tenant.user_id or "")
    dbapi_connection = connection.connection.dbapi_connection
    if isinstance(dbapi_connection, PrefixedConnection):
        dbapi_connection.enter_tenant_with_next_statement(guard.enter_statement(dbapi_connection, parameters))
        return
    try:
        connection.exec_driver_sql(guard.ENTER, parameters)
    except DBAPIError as exc:
        conflict = guard.tenant_conflict(exc.orig)
        if conflict is not None:
            raise conflict from None
        raise


def _after_begin(session: Session, transaction: SessionTransaction, connection: Connection) -> None:
    session.info[_CONNECTED_KEY] = True
    tenant = session_tenant(session)
    if tenant is not None:
        _apply(connection, tenant)


def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        session.info.pop(_CONNECTED_KEY, None)


def _install() -> None:
    criteria.install()
    if not event.contains(Session, "after_begin", _after_begin):
        event.listen(Session, "after_begin", _after_begin)
    if not event.contains(Session, "after_transaction_end", _after_transaction_end):
        event.listen(Session, "after_transaction_end", _after_transaction_end)


def set_tenant(session: Session, organization_id: object, user_id: object) -> None:
    """Scope ``session`` to a tenant for its current and every later transaction.

    Raises TenantContextError without an organization or on an AUTOCOMMIT bind, InvalidTenantError on a
    malformed UUID. Never uses a session-level ``SET``.
    """
    tenant = _tenant(organization_id, user_id)
    bind = session.get_bind()
    if isinstance(bind, Engine | Connection):
        refuse_autocommit(bind)
    if session.in_nested_transaction():
        # A savepoint rollback would undo set_config but not session.info: database and ORM would disagree.
        raise TenantContextError("set_tenant inside a savepoint (begin_nested) is refused; set it before")
    if session.info.get(_CONNECTED_KEY):
        # A transaction already holds a connection; after_begin has run for it, so apply here.
        _apply(session.connection(), tenant)
    session.info[TENANT_INFO_KEY] = tenant


@contextmanager
def tenant_session(organization_id: object, user_id: object = None, engine: Engine | None = None) -> Iterator[Session]:
    """A Session that sees only ``organization_id``'s rows; commits on success, rolls back on error, closes.

    The tenant is validated before a connection is taken, so a missing or malformed id never reaches a query.
    ``engine`` defaults to :func:`worker.db.engine.get_engine` (``DATABASE_URL``).
    """
    tenant = _tenant(organization_id, user_id)
    engine = engine if engine is not None else get_engine()
    refuse_autocommit(engine)
    # expire_on_commit=False: tasks often return values read from objects after the block has committed.
    session = Session(bind=engine, expire_on_commit=False, info={TENANT_INFO_KEY: tenant})
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


_install()
