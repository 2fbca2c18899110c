"""Alembic environment. ``worker.db.migrate.migrate`` passes an open connection in ``config.attributes``.

For authoring revisions by hand (``alembic -c worker/db/migrations/alembic.ini revision --autogenerate``) the
URL comes from ``MIGRATION_DATABASE_URL`` / ``DATABASE_URL`` through the validated settings.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from worker.db.models import Base

config = context.config
target_metadata = Base.metadata


def _configure_and_run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(connection=connection, target_metadata=target_metadata, compare_type=True,
                      compare_server_default=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure_and_run(connection)
        return
    from worker.db.engine import sqlalchemy_url
    from worker.settings import get_settings

    engine = create_engine(sqlalchemy_url(get_settings().migration_url))
    try:
        with engine.begin() as conn:
            _configure_and_run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported: row-level security is checked online")
run_migrations_online()
