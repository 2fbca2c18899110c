"""The worker's psycopg2 connection: the session reset and the tenant's entry travel with the next statement.

Two things must happen before a borrower's first statement, and each used to cost a round trip of its own:

- **The session reset.** What a task can leave in a PostgreSQL session outlives its transaction: temporary tables,
  session-level ``SET`` and ``set_config(..., false)``, ``SET ROLE``, prepared statements, ``WITH HOLD`` cursors,
  ``LISTEN``, session advisory locks, sequence caches. ``DISCARD ALL`` on every return to the pool cleared it at
  the price of a round trip and of every cached plan (the tenant guard's plpgsql functions then re-planned on the
  next transaction). The reset here is ``DISCARD ALL`` minus ``DISCARD PLANS`` (plans hold no session state).
- **The tenant's entry** (``tenant_guard.enter``, worker/db/session.py): the sealed tenant setting of each
  transaction, which the policies check.

Both are sent in front of the next statement, in the same query message, inside its transaction (psycopg2 has sent
``BEGIN`` by then): reset first, then the entry, then the statement, so no statement of the borrower ever runs
before either. The reset ends with ``COMMIT AND CHAIN``: the borrower's SQL may say ``ROLLBACK`` (even in the same
message), and a rolled-back reset would hand it the previous borrower's settings (and forward them to the next
borrower); committed, it cannot be undone, and the chained transaction keeps the characteristics psycopg2's
``BEGIN`` named. A message fails as a whole, so when the statement fails both stay pending (the reset, if it was
already committed, is merely sent once more). Where the reset cannot commit on its own (a transaction already
under way) and that transaction rolls back, the reset's transactional half is undone with it and is due again. Named
cursors, COPY, ``executemany``, ``callproc``, large objects, a cursor class of the caller's choice and autocommit
cannot carry a prefix: they get it as a statement of its own first.

While a connection waits in the pool, what its last borrower left (an advisory lock it forgot) is still held, until
the connection is next used. psycopg2 sends ``BEGIN`` as a message of its own, so a session-level
``idle_in_transaction_session_timeout`` left behind still holds until the reset arrives.
"""

from __future__ import annotations

from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.sql
from sqlalchemy import Engine, event

#: ``DISCARD ALL`` without ``DISCARD PLANS``; every statement here may run inside a transaction block.
RESET_SQL = ("CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; DEALLOCATE ALL; UNLISTEN *; "
             "SELECT pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES; ")
#: Session settings that decide how the server reads a whole query message before any statement in it runs.
MESSAGE_SETTINGS = ("client_encoding", "standard_conforming_strings")
#: Ends the reset's transaction so that the borrower's own ROLLBACK cannot undo it (see the module docstring).
RESET_COMMIT = "COMMIT AND CHAIN; "


class PrefixedCursor(psycopg2.extensions.cursor):
    """A cursor that sends its connection's pending prefix in front of the first statement it executes."""

    connection: PrefixedConnection

    def execute(self, query: Any, vars: Any = None) -> None:
        connection = self.connection
        prefix = connection.pending_prefix()
        if not prefix:
            return super().execute(query, vars)
        if self.name is None and connection.about_to_begin() and connection.message_reads_as_new():
            prefixed = _prefixed(prefix if vars is None else prefix.replace("%", "%%"), query, connection)
            if prefixed is not None:
                result = super().execute(prefixed, vars)
                connection.prefix_sent(prefix)
                return result
        connection.send_prefix()
        return super().execute(query, vars)

    def executemany(self, query: Any, vars_list: Any) -> None:
        self.connection.send_prefix()
        return super().executemany(query, vars_list)

    def callproc(self, procname: Any, parameters: Any = None) -> Any:
        self.connection.send_prefix()
        return super().callproc(procname, parameters)

    def copy_expert(self, sql: Any, file: Any, size: int = 8192) -> None:
        self.connection.send_prefix()
        return super().copy_expert(sql, file, size)

    def copy_from(self, *args: Any, **kwargs: Any) -> None:
        self.connection.send_prefix()
        return super().copy_from(*args, **kwargs)

    def copy_to(self, *args: Any, **kwargs: Any) -> None:
        self.connection.send_prefix()
        return super().copy_to(*args, **kwargs)


class PrefixedConnection(psycopg2.extensions.connection):
    """A psycopg2 connection that owes its next statement a session reset and/or a tenant entry."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reset_due = False
        self.tenant_entry: str | None = None
        self._reset_in_transaction = False
        self._message_settings = self._current_message_settings()
        self._pinned_session: tuple[Any, ...] | None = None
        self._pinned_encoding: str | None = None

    def _driver_session(self) -> tuple[Any, ...]:
        return self.autocommit, self.isolation_level, self.readonly, self.deferrable

    def pin_session(self) -> None:
        """Remember the driver's transaction settings now, so that every borrower starts with them.

        psycopg2 keeps them (and its copy of the client encoding) on the connection object, not in the PostgreSQL
        session, so the reset cannot clear them: a task that set ``autocommit`` (every later tenant refused) or
        ``set_session(readonly=True)`` would hand them to every later borrower of this connection.
        """
        self._pinned_session = self._driver_session()
        self._pinned_encoding = self.encoding

    def _current_message_settings(self) -> tuple[str | None, ...]:
        # Reported by the server whenever they change (ParameterStatus), so reading them costs no round trip.
        return tuple(self.get_parameter_status(name) for name in MESSAGE_SETTINGS)

    def message_reads_as_new(self) -> bool:
        """Whether the server reads a query message as it would on a new connection of this process.

        The reset runs only once the message it travels in has been decoded and split into statements, which
        ``client_encoding`` and ``standard_conforming_strings`` govern: after a task changed either, the next
        borrower's first statement would be read with the task's settings (its text mangled, or refused), so
        the reset must go alone first.
        """
        return self._current_message_settings() == self._message_settings

    def returned_to_pool(self) -> None:
        self.reset_due = True
        self.tenant_entry = None
        pinned = self._pinned_session
        if self.closed or pinned is None:
            return
        try:
            if self._driver_session() != pinned:
                # Client-side only while no transaction is open (the pool has rolled back): no round trip.
                autocommit, isolation, readonly, deferrable = pinned
                self.autocommit = autocommit
                self.set_session(isolation_level="DEFAULT" if isolation is None else isolation,
                                 readonly="DEFAULT" if readonly is None else readonly,
                                 deferrable="DEFAULT" if deferrable is None else deferrable)
            if self.encoding != self._pinned_encoding:
                # psycopg2 encodes queries with its own copy of the encoding, which the reset's RESET ALL cannot
                # reach; a task's set_client_encoding would mangle or refuse the next borrower's text. Rare: one
                # round trip.
                self.set_client_encoding(self._pinned_encoding)
        except psycopg2.Error:
            self.close()  # the checkout check finds it closed and the pool opens a new one

    def enter_tenant_with_next_statement(self, statement: str) -> None:
        """``statement`` (complete SQL, no parameters) runs right before the next statement of this transaction."""
        self.tenant_entry = statement

    def pending_prefix(self) -> str:
        prefix = ""
        if self.reset_due:
            prefix = RESET_SQL
            # Only in a transaction psycopg2 is about to begin: committing there commits nothing of the borrower's.
            if self.about_to_begin():
                prefix += RESET_COMMIT
        if self.tenant_entry:
            prefix += f"{self.tenant_entry}; "
        # On a line of its own: PostgreSQL quotes the failing statement's line in errors, which tasks log and store.
        return prefix + "\n" if prefix else ""

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs.get("name") or kwargs.get("cursor_factory") is not None:
            # A named cursor or a cursor class of the caller's cannot carry the prefix: send it first.
            self.send_prefix()
        kwargs.setdefault("cursor_factory", PrefixedCursor)
        return super().cursor(*args, **kwargs)

    def lobject(self, *args: Any, **kwargs: Any) -> Any:
        self.send_prefix()
        return super().lobject(*args, **kwargs)

    def send_prefix(self) -> None:
        """Send what is pending as a statement of its own (one round trip), if anything is."""
        prefix = self.pending_prefix()
        if not prefix:
            return
        cursor = super().cursor(cursor_factory=psycopg2.extensions.cursor)
        try:
            cursor.execute(prefix)
        finally:
            cursor.close()
        self.prefix_sent(prefix)

    def about_to_begin(self) -> bool:
        """Whether psycopg2 sends ``BEGIN`` before the next statement (no transaction open, not autocommit)."""
        return not self.autocommit and self.status == psycopg2.extensions.STATUS_READY

    def prefix_sent(self, prefix: str) -> None:
        if self.reset_due:
            self.reset_due = False
            self._reset_in_transaction = not self.autocommit and RESET_COMMIT not in prefix
        self.tenant_entry = None

    def commit(self) -> None:
        super().commit()
        self._reset_in_transaction = False
        self.tenant_entry = None  # it belonged to the transaction that ended

    def rollback(self) -> None:
        super().rollback()
        self.tenant_entry = None
        if self._reset_in_transaction:
            # The reset's transactional half (RESET ALL, DISCARD TEMP, ...) was undone with the transaction.
            self._reset_in_transaction = False
            self.reset_due = True


def _prefixed(prefix: str, query: Any, connection: PrefixedConnection) -> str | bytes | None:
    if isinstance(query, psycopg2.sql.Composable):
        query = query.as_string(connection)
    if isinstance(query, str):
        return prefix + query
    if isinstance(query, bytes):
        return prefix.encode("utf-8") + query
    return None


def install(engine: Engine) -> None:
    """Make ``engine``'s connections (made with ``connection_factory=PrefixedConnection``) owe a reset on return."""
    event.listen(engine, "checkin", _returned)


def _returned(dbapi_connection: Any, _record: Any) -> None:
    if isinstance(dbapi_connection, PrefixedConnection):  # None when invalidated on the way back
        dbapi_connection.returned_to_pool()
