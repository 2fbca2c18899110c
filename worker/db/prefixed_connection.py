"""The worker's psycopg2 connection: the session reset and the tenant's entry travel with the next statement.

Two things must happen before a borrower's first statement, and each used to cost a round trip of its own:

- **The session reset.** What a task can leave in a PostgreSQL session outlives its transaction: temporary tables,
  session-level ``SET`` and ``set_config(..., false)``, ``SET ROLE``, prepared statements, ``WITH HOLD`` cursors,
  ``LISTEN``, session advisory locks, sequence caches. ``DISCARD ALL`` on every return to the pool cleared it at
  the price of a round trip and of every cached plan (the tenant guard's plpgsql functions then re-planned on the
  next transaction). The reset here is ``DISCARD ALL`` minus ``DISCARD PLANS`` (plans hold no session state).
- **The tenant's entry** (``tenant_guard.enter``, worker/db/session.py): the sealed tenant setting of each
  transaction, which the policies check.

Both are sent in front of the next statement, in the same query message, inside its transaction (after the ``BEGIN``
that opens it, below): reset first, then the entry, then the statement, so no statement of the borrower ever runs
before either. The reset ends with ``COMMIT AND CHAIN``: the borrower's SQL may say ``ROLLBACK`` (even in the same
message), and a rolled-back reset would hand it the previous borrower's settings (and forward them to the next
borrower); committed, it cannot be undone, and the chained transaction keeps the characteristics its ``BEGIN``
named. A message fails as a whole, so when the statement fails both stay pending (the reset, if it was already
committed, is merely sent once more). Where the reset cannot commit on its own (a transaction already under way) and
that transaction rolls back, the reset's transactional half is undone with it and is due again. Named cursors, COPY,
``executemany``, ``callproc``, large objects and autocommit cannot carry a prefix: they get it as a statement of its
own first. A caller's cursor class gets a generated subclass that carries it.

**The transaction's ``BEGIN``** travels in the same message too. psycopg2 sends ``BEGIN`` as a message of its own, a
round trip per transaction that the query without RLS pays as well: the driver runs in autocommit here and the
connection class opens and ends the transactions itself (``BEGIN`` with the characteristics set on the connection at
the head of the first statement's message, ``COMMIT``/``ROLLBACK`` in ``commit()``/``rollback()``), so a one-query
transaction is two round trips: the message, then ``COMMIT``. What callers see is psycopg2's transaction model:
``autocommit``, ``isolation_level``, ``readonly``, ``deferrable``, ``set_session``, ``set_isolation_level``,
``status``, ``with connection:`` and ``reset()`` behave as psycopg2 documents them (in autocommit, where no ``BEGIN``
names the characteristics, they become the session's ``default_transaction_*``, as psycopg2 makes them, after a
reset still due so that its ``RESET ALL`` cannot undo them). Named cursors, large objects and
two-phase commit refuse a driver in autocommit: for the transaction that uses one, psycopg2 runs the transaction
(its own ``BEGIN``; one that already began gets a server warning, "there is already a transaction in progress").

While a connection waits in the pool, what its last borrower left (an advisory lock it forgot) is still held, until
the connection is next used. A transaction left open by a borrower (a ``BEGIN`` sent in autocommit) is rolled back
when the connection comes back to the pool.
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


_DRIVER = psycopg2.extensions.connection
_IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE
_IN_TRANSACTION = (psycopg2.extensions.TRANSACTION_STATUS_INTRANS, psycopg2.extensions.TRANSACTION_STATUS_INERROR)
_LEVEL_NAMES = {
    psycopg2.extensions.ISOLATION_LEVEL_READ_UNCOMMITTED: "READ UNCOMMITTED",
    psycopg2.extensions.ISOLATION_LEVEL_READ_COMMITTED: "READ COMMITTED",
    psycopg2.extensions.ISOLATION_LEVEL_REPEATABLE_READ: "REPEATABLE READ",
    psycopg2.extensions.ISOLATION_LEVEL_SERIALIZABLE: "SERIALIZABLE",
}
_ALL_DEFAULT = ("DEFAULT", "DEFAULT", "DEFAULT")
_SESSION_DEFAULTS = ("default_transaction_isolation", "default_transaction_read_only", "default_transaction_deferrable")


def begin_statement(isolation_level: int | None, readonly: bool | None, deferrable: bool | None) -> str:
    """The ``BEGIN`` psycopg2 would send for these characteristics (as psycopg2 reports them), with ``; ``."""
    words = ["BEGIN"]
    if isolation_level in _LEVEL_NAMES:
        words.append("ISOLATION LEVEL " + _LEVEL_NAMES[isolation_level])
    if readonly is not None:
        words.append("READ ONLY" if readonly else "READ WRITE")
    if deferrable is not None:
        words.append("DEFERRABLE" if deferrable else "NOT DEFERRABLE")
    return " ".join(words) + "; "


def session_defaults_statement(wanted: tuple[Any, Any, Any], current: tuple[Any, Any, Any]) -> str:
    """The ``SET default_transaction_...`` statements that take the session's defaults from ``current`` to ``wanted``
    (characteristics as psycopg2 reports them; None: the server's own default)."""
    statements = []
    for setting, value, was in zip(_SESSION_DEFAULTS, wanted, current, strict=True):
        if value == was:
            continue
        if value is None:
            word = "DEFAULT"
        elif setting == "default_transaction_isolation":
            word = f"'{_LEVEL_NAMES[value].lower()}'"
        else:
            word = "on" if value else "off"
        statements.append(f"SET {setting} = {word}; ")
    return "".join(statements)


def _closed_error() -> psycopg2.InterfaceError:
    return psycopg2.InterfaceError("connection already closed")


class _PrefixedExecution:
    """What every cursor of a PrefixedConnection does: send the connection's pending prefix with its first statement."""

    connection: PrefixedConnection

    def execute(self, query: Any, vars: Any = None) -> None:
        connection = self.connection
        prefix = connection.pending_prefix()
        if not prefix:
            return super().execute(query, vars)  # type: ignore[misc]
        if self.name is None and connection.about_to_begin() and connection.message_reads_as_new():  # type: ignore[attr-defined]
            prefixed = _prefixed(prefix if vars is None else prefix.replace("%", "%%"), query, connection)
            if prefixed is not None:
                result = super().execute(prefixed, vars)  # type: ignore[misc]
                connection.prefix_sent(prefix)
                return result
        connection.send_prefix()
        return super().execute(query, vars)  # type: ignore[misc]

    def executemany(self, query: Any, vars_list: Any) -> None:
        self.connection.send_prefix()
        return super().executemany(query, vars_list)  # type: ignore[misc]

    def callproc(self, procname: Any, parameters: Any = None) -> Any:
        self.connection.send_prefix()
        return super().callproc(procname, parameters)  # type: ignore[misc]

    def copy_expert(self, sql: Any, file: Any, size: int = 8192) -> None:
        self.connection.send_prefix()
        return super().copy_expert(sql, file, size)  # type: ignore[misc]

    def copy_from(self, *args: Any, **kwargs: Any) -> None:
        self.connection.send_prefix()
        return super().copy_from(*args, **kwargs)  # type: ignore[misc]

    def copy_to(self, *args: Any, **kwargs: Any) -> None:
        self.connection.send_prefix()
        return super().copy_to(*args, **kwargs)  # type: ignore[misc]


class PrefixedCursor(_PrefixedExecution, psycopg2.extensions.cursor):
    """A cursor that sends its connection's pending prefix in front of the first statement it executes."""


_CURSOR_CLASSES: dict[type, type] = {psycopg2.extensions.cursor: PrefixedCursor}


def prefixed_cursor_class(cursor_class: type) -> type:
    """``cursor_class`` (a caller's, say psycopg2.extras.RealDictCursor) with the prefix and the ``BEGIN`` added.

    Without them a caller's cursor would run its statements outside any transaction (the driver is in autocommit).
    """
    prefixed = _CURSOR_CLASSES.get(cursor_class)
    if prefixed is None:
        if issubclass(cursor_class, _PrefixedExecution):
            prefixed = cursor_class
        else:
            prefixed = type(f"Prefixed{cursor_class.__name__}", (_PrefixedExecution, cursor_class), {})
        _CURSOR_CLASSES[cursor_class] = prefixed
    return prefixed


def _driver_arguments(characteristics: tuple[Any, Any, Any]) -> tuple[Any, ...]:
    """Characteristics as psycopg2 reports them, as its ``set_session`` takes them (None there means unchanged)."""
    return tuple("DEFAULT" if value is None else value for value in characteristics)


def _characteristic(index: int, name: str) -> property:
    """psycopg2's ``isolation_level``, ``readonly`` or ``deferrable`` property, kept by the connection class."""

    def get(connection: PrefixedConnection) -> Any:
        return connection._characteristics[index]

    def set_(connection: PrefixedConnection, value: Any) -> None:
        connection._refuse_in_transaction(name)
        changed: list[Any] = [None, None, None]  # None: unchanged
        changed[index] = "DEFAULT" if value is None else value
        connection._set_characteristics(*changed)
        connection._sync_session_defaults()

    return property(get, set_)


class PrefixedConnection(psycopg2.extensions.connection):
    """A psycopg2 connection that owes its next statement a ``BEGIN``, a session reset and/or a tenant entry."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reset_due = False
        self.tenant_entry: str | None = None
        self._reset_in_transaction = False
        self._message_settings = self._current_message_settings()
        self._pinned_session: tuple[Any, ...] | None = None
        self._pinned_encoding: str | None = None
        self._pinned_cursor_factory: Any = None
        # The transaction model callers see; the driver itself stays in autocommit with default characteristics
        # (so that switching it out of autocommit for a named cursor costs no round trip).
        self._autocommit = False
        self._characteristics: tuple[Any, Any, Any] = (None, None, None)
        self._begin = begin_statement(None, None, None)
        self._entered = False  # inside ``with connection:``, which opens a transaction even in autocommit
        # What this class set the session's default_transaction_* to (None: untouched), for autocommit.
        self._session_defaults: tuple[Any, Any, Any] = (None, None, None)
        self._driver_runs_transaction = False
        _DRIVER.autocommit.__set__(self, True)

    # -- psycopg2's transaction model, kept without the driver's BEGIN -----------------------------------------

    @property  # type: ignore[override]
    def autocommit(self) -> bool:
        return self._autocommit

    @autocommit.setter
    def autocommit(self, value: Any) -> None:
        self._refuse_in_transaction("autocommit")
        self._autocommit = bool(value)
        self._sync_session_defaults()

    isolation_level = _characteristic(0, "isolation_level")
    readonly = _characteristic(1, "readonly")
    deferrable = _characteristic(2, "deferrable")

    @property  # type: ignore[override]
    def status(self) -> int:
        status = _DRIVER.status.__get__(self)
        # _in_own_transaction() would miss a transaction of this class that psycopg2 failed to take over (its BEGIN
        # refused in an aborted transaction).
        if (status == psycopg2.extensions.STATUS_READY and not self.closed and not self._effective_autocommit()
                and self.get_transaction_status() in _IN_TRANSACTION):
            return psycopg2.extensions.STATUS_BEGIN
        return status

    def set_session(self, isolation_level: Any = None, readonly: Any = None, deferrable: Any = None,
                    autocommit: Any = None) -> None:
        self._refuse_in_transaction("set_session")
        if (isolation_level, readonly, deferrable) != (None, None, None):
            self._set_characteristics(isolation_level, readonly, deferrable)
        if autocommit is not None:
            self._autocommit = bool(autocommit)
        self._sync_session_defaults()

    def set_isolation_level(self, level: Any) -> None:
        if self.closed:
            raise _closed_error()
        if isinstance(level, int) and not 0 <= level <= 4:
            raise ValueError("isolation level must be between 0 and 4")
        self.rollback()
        if level == 0:  # ISOLATION_LEVEL_AUTOCOMMIT
            self._autocommit = True
        else:
            self._autocommit = False
            # psycopg2 reads anything but None or a number as READ COMMITTED.
            self._set_characteristics("DEFAULT" if level is None else level if isinstance(level, int) else 1,
                                      None, None)
        self._sync_session_defaults()

    def commit(self) -> None:
        if self._driver_runs_transaction or self.closed:
            try:
                super().commit()
            finally:  # a failed COMMIT (a deferred constraint) ends the transaction too
                self._take_transactions_back()
        # Also after the driver's: its BEGIN may have failed (an aborted transaction), leaving this class's own open.
        if self._in_own_transaction():
            self._send("COMMIT")
        self._reset_in_transaction = False
        self.tenant_entry = None  # it belonged to the transaction that ended

    def rollback(self) -> None:
        if self._driver_runs_transaction or self.closed:
            try:
                super().rollback()
            finally:
                self._take_transactions_back()
        if self._in_own_transaction():
            self._send("ROLLBACK")
        self.tenant_entry = None
        if self._reset_in_transaction:
            # The reset's transactional half (RESET ALL, DISCARD TEMP, ...) was undone with the transaction.
            self._reset_in_transaction = False
            self.reset_due = True

    def __enter__(self) -> PrefixedConnection:
        if self.closed:
            raise _closed_error()
        if self._entered:
            raise psycopg2.ProgrammingError("the connection cannot be re-entered recursively")
        self._entered = True
        return self

    def __exit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
        try:
            if exc_type is None:
                self.commit()
            else:
                self.rollback()
        finally:
            self._entered = False

    def reset(self) -> None:
        self._take_transactions_back()  # handed to psycopg2, whose BEGIN failed: this class's transaction is open
        if not self.closed and not self._driver_runs_transaction and self.get_transaction_status() != _IDLE:
            # psycopg2 aborts the transactions it began before its DISCARD ALL, which refuses a transaction block
            # (also one a task's own BEGIN opened in autocommit).
            self._send("ROLLBACK")
        super().reset()  # the driver's own reset: out of autocommit, default characteristics
        self._autocommit, self._driver_runs_transaction = False, False  # a ``with`` block goes on, as in psycopg2
        self._session_defaults = (None, None, None)  # DISCARD ALL
        self._characteristics = (None, None, None)
        self._begin = begin_statement(None, None, None)
        _DRIVER.autocommit.__set__(self, True)

    def tpc_begin(self, xid: Any) -> None:
        if self._autocommit:
            raise psycopg2.ProgrammingError("tpc_begin can't be called in autocommit mode")
        self._refuse_in_transaction("tpc_begin")
        self._let_driver_run_transaction()
        super().tpc_begin(xid)

    def tpc_commit(self, *args: Any) -> None:
        super().tpc_commit(*args)
        self._take_transactions_back()

    def tpc_rollback(self, *args: Any) -> None:
        super().tpc_rollback(*args)
        self._take_transactions_back()

    def _effective_autocommit(self) -> bool:
        return self._autocommit and not self._entered

    def _in_own_transaction(self) -> bool:
        """A transaction this class began (or a task's SQL did) is open on the server; False when the driver runs it."""
        return (not self._driver_runs_transaction and not self.closed and not self._effective_autocommit()
                and self.get_transaction_status() in _IN_TRANSACTION)

    def _refuse_in_transaction(self, what: str) -> None:
        if self.closed:
            raise _closed_error()
        if self.status != psycopg2.extensions.STATUS_READY:
            raise psycopg2.ProgrammingError(f"{what} cannot be used inside a transaction")
        # No transaction: a driver handed one that never began (a named cursor created, not run) gives it back, or it
        # would begin the next one whatever the mode now set.
        self._take_transactions_back()

    def _set_characteristics(self, isolation_level: Any, readonly: Any, deferrable: Any) -> None:
        """Read the values as psycopg2 does (names, numbers, booleans, ``DEFAULT``; None leaves one unchanged).

        Out of autocommit and with its own characteristics at their defaults, the driver only records them: no round
        trip. It is put back as it was whether or not psycopg2 accepted the values.
        """
        self._take_transactions_back()
        current = _driver_arguments(self._characteristics)
        _DRIVER.autocommit.__set__(self, False)
        try:
            _DRIVER.set_session(self, *current)
            _DRIVER.set_session(self, isolation_level, readonly, deferrable)
            self._characteristics = (_DRIVER.isolation_level.__get__(self), _DRIVER.readonly.__get__(self),
                                     _DRIVER.deferrable.__get__(self))
            self._begin = begin_statement(*self._characteristics)
        finally:
            _DRIVER.set_session(self, *_ALL_DEFAULT)
            _DRIVER.autocommit.__set__(self, True)

    def _sync_session_defaults(self) -> None:
        """In autocommit no ``BEGIN`` names the characteristics: psycopg2 makes them the session's
        ``default_transaction_*`` (``set_session(readonly=True, autocommit=True)``), and gives the session its defaults
        back when it leaves autocommit. One round trip, only when they change."""
        wanted = self._characteristics if self._autocommit else (None, None, None)
        if self.closed or wanted == self._session_defaults:
            return
        # A reset still due (RESET ALL) would undo the SETs: it goes first. The tenant's entry stays pending.
        reset = RESET_SQL if self.reset_due and self._autocommit else ""
        self._send(reset + session_defaults_statement(wanted, self._session_defaults))
        self._session_defaults = wanted
        if reset:
            self.reset_due = False

    def _let_driver_run_transaction(self) -> None:
        """Named cursors, large objects and two-phase commit refuse a driver in autocommit: psycopg2 runs this one."""
        if self._driver_runs_transaction or self._effective_autocommit() or self.closed:
            return
        _DRIVER.autocommit.__set__(self, False)  # its characteristics are the defaults: no round trip
        if self.get_transaction_status() == _IDLE:
            _DRIVER.set_session(self, *_driver_arguments(self._characteristics))
        # else the transaction began with them, and the driver's BEGIN must name none: PostgreSQL refuses
        # [NOT] DEFERRABLE (and a changed isolation level) after the transaction's first query or in a savepoint.
        self._driver_runs_transaction = True

    def _take_transactions_back(self) -> None:
        if (not self._driver_runs_transaction or self.closed
                or _DRIVER.status.__get__(self) != psycopg2.extensions.STATUS_READY):
            return
        _DRIVER.set_session(self, *_ALL_DEFAULT)
        _DRIVER.autocommit.__set__(self, True)
        self._driver_runs_transaction = False

    def _send(self, statement: str) -> None:
        cursor = _DRIVER.cursor(self, cursor_factory=psycopg2.extensions.cursor)
        try:
            cursor.execute(statement)
        finally:
            cursor.close()

    # -- the session reset and the tenant entry ------------------------------------------------------------------

    def _driver_session(self) -> tuple[Any, ...]:
        return self.autocommit, self.isolation_level, self.readonly, self.deferrable

    def pin_session(self) -> None:
        """Remember the transaction settings now, so that every borrower starts with them.

        They live on the connection object, not in the PostgreSQL session, so the reset cannot clear them: a task
        that set ``autocommit`` (every later tenant refused) or ``set_session(readonly=True)`` would hand them to
        every later borrower of this connection.
        """
        self._pinned_session = self._driver_session()
        self._pinned_encoding = self.encoding
        self._pinned_cursor_factory = self.cursor_factory  # a task's RealDictCursor would garble SQLAlchemy's rows

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
        if self.closed:
            return
        try:
            self._entered = False
            if self._driver_runs_transaction or self.get_transaction_status() != _IDLE:
                # Left open by the borrower (a BEGIN of its own in autocommit, a driver-run transaction): the pool's
                # rollback does not end those. Rare: one round trip.
                if self._driver_runs_transaction:
                    super().rollback()
                    self._take_transactions_back()
                if self.get_transaction_status() != _IDLE:
                    self._send("ROLLBACK")
            if pinned is not None and self._driver_session() != pinned:
                autocommit, isolation, readonly, deferrable = pinned
                self._autocommit = autocommit
                self._set_characteristics(*_driver_arguments((isolation, readonly, deferrable)))
            self._sync_session_defaults()  # what an autocommit borrower set them to: no BEGIN may take them
            if pinned is not None:
                self.cursor_factory = self._pinned_cursor_factory
            if pinned is not None and self.encoding != self._pinned_encoding:
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
        begins = self.about_to_begin()
        prefix = self._begin if begins and not self._driver_runs_transaction else ""
        if self.reset_due:
            prefix += RESET_SQL
            # Only in a transaction about to begin: committing there commits nothing of the borrower's.
            if begins:
                prefix += RESET_COMMIT
        if self.tenant_entry:
            prefix += f"{self.tenant_entry}; "
        # On a line of its own: PostgreSQL quotes the failing statement's line in errors, which tasks log and store.
        return prefix + "\n" if prefix else ""

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        name = args[0] if args else kwargs.get("name")
        factory = (args[1] if len(args) > 1 else kwargs.pop("cursor_factory", None)) or self.cursor_factory
        factory = factory or psycopg2.extensions.cursor
        if name is not None or not isinstance(factory, type):
            # A named cursor cannot carry the prefix, and psycopg2 refuses one outside a transaction it began; a
            # factory that is not a cursor class cannot be given the prefix either. psycopg2 runs this transaction.
            self._let_driver_run_transaction()
            self.send_prefix()
        else:
            factory = prefixed_cursor_class(factory)
        if len(args) > 1:
            args = (args[0], factory, *args[2:])
        else:
            kwargs["cursor_factory"] = factory
        return super().cursor(*args, **kwargs)

    def lobject(self, *args: Any, **kwargs: Any) -> Any:
        self._let_driver_run_transaction()
        self.send_prefix()
        return super().lobject(*args, **kwargs)

    def send_prefix(self) -> None:
        """Send what is pending (``BEGIN`` included) as a statement of its own (one round trip), if anything is."""
        prefix = self.pending_prefix()
        if not prefix:
            return
        self._send(prefix)
        self.prefix_sent(prefix)

    def about_to_begin(self) -> bool:
        """Whether the next statement opens a transaction (none open, not autocommit)."""
        if self.closed or self._effective_autocommit():
            return False
        if self._driver_runs_transaction and _DRIVER.status.__get__(self) != psycopg2.extensions.STATUS_READY:
            return False
        # With the driver running it, a transaction this class began already goes on under psycopg2's BEGIN.
        return self.get_transaction_status() == _IDLE

    def prefix_sent(self, prefix: str) -> None:
        if self.reset_due:
            self.reset_due = False
            self._reset_in_transaction = not self._effective_autocommit() and RESET_COMMIT not in prefix
        self.tenant_entry = None


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
