"""Create and drop a database with its two roles (owner for migrations, runtime for tasks).

Names are random so that runs never depend on each other (tests) and the URLs come back ready for
`MIGRATION_DATABASE_URL` and `DATABASE_URL`.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url


@dataclass(frozen=True)
class ProvisionedDatabase:
    name: str
    owner_url: str
    runtime_url: str
    admin_url: str


def _admin_engine(admin_url: str):  # type: ignore[no-untyped-def]
    return create_engine(admin_url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)


def provision_database(admin_url: str, prefix: str = "tw") -> ProvisionedDatabase:
    """Create ``<prefix>_<random>`` owned by a fresh owner role, plus a runtime role with login."""
    suffix = secrets.token_hex(4)
    name, owner, runtime = f"{prefix}_{suffix}", f"{prefix}_{suffix}_owner", f"{prefix}_{suffix}_app"
    password = secrets.token_hex(12)
    engine = _admin_engine(admin_url)
    with engine.connect() as conn:
        conn.execute(text(f'CREATE ROLE "{owner}" LOGIN PASSWORD :pw'), {"pw": password})
        conn.execute(text(f'CREATE ROLE "{runtime}" LOGIN NOSUPERUSER NOBYPASSRLS PASSWORD :pw'), {"pw": password})
        conn.execute(text(f'CREATE DATABASE "{name}" OWNER "{owner}"'))
        # The runtime role gets its rights from the migration, not from PUBLIC defaults.
        conn.execute(text(f'REVOKE ALL ON DATABASE "{name}" FROM PUBLIC'))
        conn.execute(text(f'GRANT CONNECT ON DATABASE "{name}" TO "{runtime}"'))
    engine.dispose()
    base = make_url(admin_url).set(database=name, password=password)
    return ProvisionedDatabase(
        name=name,
        owner_url=base.set(username=owner).render_as_string(hide_password=False),
        runtime_url=base.set(username=runtime).render_as_string(hide_password=False),
        admin_url=make_url(admin_url).set(database=name).render_as_string(hide_password=False),
    )


def drop_database(admin_url: str, db: ProvisionedDatabase) -> None:
    engine = _admin_engine(admin_url)
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)'))
        for role in (f"{db.name}_app", f"{db.name}_owner"):
            conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
    engine.dispose()
