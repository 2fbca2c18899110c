"""Checking a pooled connection out costs no round trip unless the connection may have died.

SQLAlchemy's ``pool_pre_ping`` sends ``SELECT 1`` on every checkout: a round trip per transaction, for the rare
checkout after a database restart. A connection whose server went away (restart, failover,
``pg_terminate_backend``, crash) has input waiting on its socket, the server's goodbye or the end of the stream,
since nothing else arrives on an idle PostgreSQL connection that listens to nothing; polling the socket tells that
without a round trip. A connection idle for longer than ``PING_AFTER_IDLE_SECONDS`` is pinged anyway, for peers
that vanish without a word (a NAT or firewall forgetting the flow). A failed ping makes the pool open a new
connection in its place (``DisconnectionError``), as pre-ping did.
"""

from __future__ import annotations

import select
import time
from typing import Any

import psycopg2
from sqlalchemy import Engine, event
from sqlalchemy.exc import DisconnectionError

#: Above this idle time a checkout pings even when the socket is quiet.
PING_AFTER_IDLE_SECONDS = 10.0
_RETURNED_AT = "worker.db.returned_at"


def install(engine: Engine) -> None:
    event.listen(engine, "checkin", _returned)
    event.listen(engine, "checkout", _check_out)


def _returned(dbapi_connection: Any, record: Any) -> None:
    if dbapi_connection is None:  # invalidated on the way back
        return
    record.info[_RETURNED_AT] = time.monotonic()


def _check_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    returned_at = record.info.get(_RETURNED_AT)
    if returned_at is None:
        return  # opened for this checkout
    if time.monotonic() - returned_at < PING_AFTER_IDLE_SECONDS and not _input_waiting(dbapi_connection):
        return
    try:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("select 1")
        finally:
            cursor.close()
        dbapi_connection.commit()  # keeps a session reset sent with the ping (worker/db/prefixed_connection.py)
    except psycopg2.Error as exc:
        raise DisconnectionError(f"pooled database connection is gone: {exc.__class__.__name__}") from exc


def _input_waiting(dbapi_connection: Any) -> bool:
    if dbapi_connection.closed:
        return True
    poller = select.poll()
    poller.register(dbapi_connection.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
    return bool(poller.poll(0))
