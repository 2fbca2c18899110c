"""Process-wide SQLAlchemy engines, refused when they would lose the tenant setting, disposed after fork."""

from __future__ import annotations

import os
import threading
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection, make_url

from worker.db import (
    guard,  # first: importing it registers every new connection's tenant key, before anyone uses one
    liveness,
    prefixed_connection,
)
from worker.db.prefixed_connection import PrefixedConnection
from worker.errors import TenantContextError

_engines: dict[tuple[str, tuple[tuple[str, Any], ...]], Engine] = {}
_lock = threading.Lock()


def sqlalchemy_url(url: str) -> str:
    """Accept the ``postgres://`` spelling that the configuration allows but SQLAlchemy 2 rejects."""
    if url.startswith("postgres://"):
        return "postgresql://" + url[len("postgres://"):]
    return url


def role_name(url: str) -> str | None:
    return make_url(sqlalchemy_url(url)).username


def refuse_autocommit(bind: Engine | Connection) -> None:
    """Raise TenantContextError for an engine or connection that runs without transactions.

    ``set_config(..., true)`` outside a transaction ends with the statement, so under AUTOCOMMIT every query
    after it runs with no tenant (or, on a policy without ``nullif``, the wrong one). Refusing is the only safe
    answer.
    """
    level = bind.get_execution_options().get("isolation_level")
    engine = bind.engine if isinstance(bind, Connection) else bind
    # ``create_engine(isolation_level=...)`` keeps the level here rather than in the execution options.
    level = level or getattr(engine.dialect, "_on_connect_isolation_level", None)
    if isinstance(bind, Connection) and not bind.closed and not bind.invalidated:
        # Catches what configuration cannot show: connect_args, pool events, a driver-level switch.
        if getattr(bind.connection.dbapi_connection, "autocommit", False) is True:
            level = "AUTOCOMMIT"
    if str(level or "").upper() == "AUTOCOMMIT":
        raise TenantContextError(
            "an AUTOCOMMIT engine or connection cannot carry a transaction-local tenant setting; "
            "use a transactional engine for tenant-scoped work")


def get_engine(url: str | None = None, **options: Any) -> Engine:
    """The process's engine for ``url`` (default: ``DATABASE_URL``), created once and cached.

    Pool size, overflow and timeout come from the settings unless given in ``options``. A connection that may
    have died is pinged at checkout (``check_liveness``, worker/db/liveness.py), because workers sit idle for
    long stretches and databases restart; every borrower gets a clean session (``reset_session_state``,
    worker/db/prefixed_connection.py). Neither costs a round trip on a busy, healthy connection.
    """
    from worker.settings import get_settings

    settings = None
    if url is None:
        settings = get_settings()
        url = settings.database_url
    url = sqlalchemy_url(url)
    key = (url, tuple(sorted(options.items(), key=lambda item: item[0])))
    engine = _engines.get(key)
    if engine is not None:
        return engine
    with _lock:
        engine = _engines.get(key)
        if engine is not None:
            return engine
        if not {"pool_size", "max_overflow", "pool_timeout"} <= options.keys() and "poolclass" not in options:
            settings = settings or get_settings()
            options = {"pool_size": settings.database_pool_size, "max_overflow": settings.database_max_overflow,
                       "pool_timeout": settings.database_pool_timeout, **options}
        reset = options.pop("reset_session_state", True)
        factory = options.pop("connection_factory", PrefixedConnection)  # tests pass a subclass that counts
        if reset:
            options["connect_args"] = {**options.get("connect_args", {}), "connection_factory": factory}
        check_liveness = options.pop("check_liveness", True)
        engine = create_engine(url, **options)
        try:
            refuse_autocommit(engine)
        except TenantContextError:
            engine.dispose()
            raise
        event.listen(engine, "connect", _check_new_connection)
        if reset:
            prefixed_connection.install(engine)
            # The tenant's entry travels with another statement: its refusal arrives as that statement's error.
            event.listen(engine, "handle_error", _tenant_conflict)
        if check_liveness:
            liveness.install(engine)
        _engines[key] = engine
        return engine


def _tenant_conflict(context: Any) -> None:
    conflict = guard.tenant_conflict(context.original_exception)
    if conflict is not None:
        raise conflict


def _check_new_connection(dbapi_connection: Any, _record: Any) -> None:
    """A new connection must start without a tenant, and its transactions keep the defaults it started with.

    ``ALTER ROLE/DATABASE ... SET app.current_organization`` or ``-c`` options in the URL would give every
    connection without a tenant that organization's rows; the policies fail closed only on an empty setting.

    A task can change the session's transaction defaults (``SET default_transaction_read_only = on``). The session
    reset runs inside the next borrower's transaction, after ``BEGIN`` has already taken those defaults, so the
    next borrower's transaction would be read-only, and rolling it back would bring the setting back for the one
    after. Pinning the connection's own defaults, read before any task's SQL ran, names them in every ``BEGIN``
    (which worker/db/prefixed_connection.py sends). An isolation level the engine or SQLAlchemy set is left as it is.
    """
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("select current_setting('app.current_organization', true), "
                       "current_setting('default_transaction_isolation'), "
                       "current_setting('default_transaction_read_only') = 'on', "
                       "current_setting('default_transaction_deferrable') = 'on'")
        preset, isolation, read_only, deferrable = cursor.fetchone()
    finally:
        cursor.close()
    dbapi_connection.rollback()
    if preset:
        raise TenantContextError(f"new database connections start with app.current_organization={preset!r} "
                                 "(ALTER ROLE/DATABASE ... SET, or options in DATABASE_URL); remove that default")
    if isinstance(dbapi_connection, PrefixedConnection):
        dbapi_connection.set_session(
            isolation_level=isolation.upper() if dbapi_connection.isolation_level is None else None,
            readonly=read_only if dbapi_connection.readonly is None else None,
            deferrable=deferrable if dbapi_connection.deferrable is None else None)
        dbapi_connection.pin_session()


def dispose_engines_after_fork() -> None:
    """Give a forked child fresh pools without closing the parent's sockets (``close=False``).

    Connected to Celery's ``worker_process_init`` by the app, and to ``os.register_at_fork`` below for any
    other fork; calling it twice is harmless.
    """
    for engine in list(_engines.values()):
        engine.dispose(close=False)


def reset_engines() -> None:
    """Close and forget every cached engine (tests; settings changed)."""
    with _lock:
        engines = list(_engines.values())
        _engines.clear()
    for engine in engines:
        engine.dispose()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=dispose_engines_after_fork)
