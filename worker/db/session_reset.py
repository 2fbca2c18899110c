"""Every borrower of a pooled connection starts as clean as on a new one, without a round trip for the reset.

What a task can leave in a PostgreSQL session outlives its transaction: temporary tables, session-level ``SET``
and ``set_config(..., false)``, ``SET ROLE``, prepared statements, ``WITH HOLD`` cursors, ``LISTEN``, session
advisory locks, sequence caches. ``DISCARD ALL`` on every return to the pool cleared it at the price of a round trip
and of every cached plan (the tenant guard's plpgsql functions then re-plan on the next transaction): that reset
alone cost more than the one-query transaction it followed.

Here the reset is what ``DISCARD ALL`` does except ``DISCARD PLANS`` (plans hold no session state), and it is sent
in front of the next borrower's first statement, in the same query string, inside its transaction: nothing of the
previous borrower's session is visible to any statement of the next one. If that transaction rolls back, the
transactional parts of the reset roll back with it, so the reset stays due until a transaction that ran it commits.

The connection class does this for every cursor SQLAlchemy or a task opens on it; statements that cannot carry a
prefix (named cursors, COPY, ``executemany``, autocommit, a cursor class of the caller's choice) get the reset as a
statement of its own first. While the connection waits in the pool the previous borrower's state is still there,
but no one can reach it: an advisory lock a task forgot stays held until the connection is next used.
"""

from __future__ import annotations

from typing import Any

import psycopg2.extensions
import psycopg2.sql
from sqlalchemy import Engine, event

#: ``DISCARD ALL`` without ``DISCARD PLANS``; every statement here may run inside a transaction block.
RESET_SQL = ("CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; DEALLOCATE ALL; UNLISTEN *; "
             "SELECT pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES; ")


class ResettingCursor(psycopg2.extensions.cursor):
    """A cursor that puts the connection's pending reset in front of the first statement it sends."""

    connection: ResettingConnection

    def execute(self, query: Any, vars: Any = None) -> None:
        connection = self.connection
        if not connection.reset_due:
            return super().execute(query, vars)
        if self.name is None and not connection.autocommit \
                and connection.status == psycopg2.extensions.STATUS_READY:
            prefixed = _with_reset(query, connection)
            if prefixed is not None:
                # psycopg2 sends BEGIN first (status READY), so the reset runs in the statement's transaction.
                result = super().execute(prefixed, vars)
                connection.reset_sent()
                return result
        connection.reset_now()
        return super().execute(query, vars)

    def executemany(self, query: Any, vars_list: Any) -> None:
        self.connection.reset_now()
        return super().executemany(query, vars_list)

    def callproc(self, procname: Any, parameters: Any = None) -> Any:
        self.connection.reset_now()
        return super().callproc(procname, parameters)

    def copy_expert(self, sql: Any, file: Any, size: int = 8192) -> None:
        self.connection.reset_now()
        return super().copy_expert(sql, file, size)

    def copy_from(self, *args: Any, **kwargs: Any) -> None:
        self.connection.reset_now()
        return super().copy_from(*args, **kwargs)

    def copy_to(self, *args: Any, **kwargs: Any) -> None:
        self.connection.reset_now()
        return super().copy_to(*args, **kwargs)


class ResettingConnection(psycopg2.extensions.connection):
    """A psycopg2 connection that owes its next borrower a session reset after each return to the pool."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reset_due = False
        self._reset_in_transaction = False

    def returned_to_pool(self) -> None:
        self.reset_due = True

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        if self.reset_due and (args or kwargs.get("name") or kwargs.get("cursor_factory") is not None):
            # A named cursor or a cursor class of the caller's: it cannot carry the prefix, reset first.
            self.reset_now()
        kwargs.setdefault("cursor_factory", ResettingCursor)
        return super().cursor(*args, **kwargs)

    def lobject(self, *args: Any, **kwargs: Any) -> Any:
        self.reset_now()
        return super().lobject(*args, **kwargs)

    def reset_now(self) -> None:
        """Send the pending reset as a statement of its own (one round trip), if one is due."""
        if not self.reset_due:
            return
        cursor = super().cursor(cursor_factory=psycopg2.extensions.cursor)
        try:
            cursor.execute(RESET_SQL)
        finally:
            cursor.close()
        self.reset_sent()

    def reset_sent(self) -> None:
        self.reset_due = False
        self._reset_in_transaction = not self.autocommit

    def commit(self) -> None:
        super().commit()
        self._reset_in_transaction = False

    def rollback(self) -> None:
        super().rollback()
        if self._reset_in_transaction:
            # The reset's transactional half (RESET ALL, DISCARD TEMP, ...) was undone with the transaction.
            self._reset_in_transaction = False
            self.reset_due = True


def _with_reset(query: Any, connection: ResettingConnection) -> str | bytes | None:
    if isinstance(query, psycopg2.sql.Composable):
        query = query.as_string(connection)
    if isinstance(query, str):
        return RESET_SQL + query
    if isinstance(query, bytes):
        return RESET_SQL.encode("ascii") + query
    return None


def install(engine: Engine) -> None:
    """Make ``engine``'s connections (created with ``connection_factory=ResettingConnection``) owe a reset on return."""
    event.listen(engine, "checkin", _returned)


def _returned(dbapi_connection: Any, _record: Any) -> None:
    if isinstance(dbapi_connection, ResettingConnection):  # None when invalidated on the way back
        dbapi_connection.returned_to_pool()
