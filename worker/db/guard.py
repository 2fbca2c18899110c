"""The worker's half of the sealed tenant setting (revision 0002): a key per connection, a proof per transaction.

Threat: SQL run by a task (its own queries, or SQL injected into them) calling
``set_config('app.current_organization', <other org>, true)``. The policies no longer trust that setting
alone; they trust ``tenant_guard.current_organization()``, which checks a seal that only
``tenant_guard.enter`` writes, and ``enter`` wants a proof made with a key the database handed to this
process when it opened the connection, before any task's SQL could run on it. The database hands out that key
once per backend, so SQL cannot fetch it later, and it sits in an owner-only table.

Not covered: Python code in the worker process can read the keys (it can read DATABASE_URL too); the boundary
is against SQL, not against the worker's own code.
"""

from __future__ import annotations

import hashlib
from typing import Any

import psycopg2.extensions
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.pool import Pool

from worker.errors import TenantConflictError, TenantContextError

#: ``ConnectionRecord.info`` key of the connection's tenant key (bytes).
KEY_INFO = "worker.db.tenant_key"
# Since revision 0007 enter also refuses a user of another organization (SQLSTATE TW001; check_user before).
#: In the driver's own parameter style: sent as it is, or rendered complete by enter_statement().
ENTER = "select tenant_guard.enter(%(org)s, %(usr)s, %(proof)s)"
FOREIGN_USER_SQLSTATE = "TW001"
_HAS_GUARD = ("select coalesce(has_function_privilege(to_regprocedure('tenant_guard.register_connection()'), "
              "'EXECUTE'), false)")


def proof(key: bytes, organization_id: str, user_id: str) -> str:
    """``sha256(key || sha256(org/user))`` in hex, as ``tenant_guard.enter`` computes it."""
    inner = hashlib.sha256(f"{organization_id}/{user_id}".encode()).digest()
    return hashlib.sha256(key + inner).hexdigest()


def enter_parameters(connection: Connection, organization_id: str, user_id: str) -> dict[str, str]:
    key = connection.info.get(KEY_INFO)
    if key is None:
        raise TenantContextError(
            "this database connection has no tenant key: it was opened before `migrate` created tenant_guard, "
            "or the runtime role may not execute tenant_guard.register_connection(); run migrate and reconnect")
    return {"org": organization_id, "usr": user_id, "proof": proof(key, organization_id, user_id)}


def enter_statement(dbapi_connection: Any, parameters: dict[str, str]) -> str:
    """``ENTER`` with its parameters quoted by the driver: complete SQL, to be sent in front of another statement."""
    # The base class's cursor: the connection's own would first send what it owes the next statement.
    cursor = psycopg2.extensions.connection.cursor(dbapi_connection)
    try:
        return cursor.mogrify(ENTER, parameters).decode()
    finally:
        cursor.close()


def tenant_conflict(error: BaseException | None) -> TenantConflictError | None:
    """The TenantConflictError for the refusal of a user of another organization (``tenant_guard.enter``)."""
    if getattr(error, "pgcode", None) != FOREIGN_USER_SQLSTATE:
        return None
    diag = getattr(error, "diag", None)
    return TenantConflictError(getattr(diag, "message_primary", None) or "user_id is a user of another organization")


def _register_connection(dbapi_connection: Any, connection_record: Any) -> None:
    """Fetch this backend's key as the very first thing on a new connection (every pool of the process).

    Databases without ``tenant_guard`` (the admin database, an unmigrated one) are left alone.
    """
    if not isinstance(dbapi_connection, psycopg2.extensions.connection):
        return
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(_HAS_GUARD)
        if cursor.fetchone()[0]:
            cursor.execute("select tenant_guard.register_connection()")
            connection_record.info[KEY_INFO] = bytes(cursor.fetchone()[0])
    finally:
        cursor.close()
    dbapi_connection.commit()


def install() -> None:
    """Register on every SQLAlchemy pool (idempotent), so that tests' and tools' engines work like get_engine's."""
    if not event.contains(Pool, "connect", _register_connection):
        event.listen(Pool, "connect", _register_connection)


install()
