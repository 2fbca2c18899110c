"""Create and drop a database with its two roles (owner for migrations, runtime for tasks).

Names are random so that runs never depend on each other (tests) and the URLs come back ready for
`MIGRATION_DATABASE_URL` and `DATABASE_URL`.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError


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
    hide_other_sessions_statements(make_url(admin_url).set(database=name).render_as_string(hide_password=False))
    base = make_url(admin_url).set(database=name, password=password)
    return ProvisionedDatabase(
        name=name,
        owner_url=base.set(username=owner).render_as_string(hide_password=False),
        runtime_url=base.set(username=runtime).render_as_string(hide_password=False),
        admin_url=make_url(admin_url).set(database=name).render_as_string(hide_password=False),
    )


def hide_other_sessions_statements(database_admin_url: str) -> None:
    """As a superuser in that database: only pg_read_all_stats may read other sessions' statements.

    By default every role sees the query text (literal values included) of all sessions of its own role, which
    for the runtime role are the other tenants' tasks. `migrate` runs as the owner and cannot do this itself;
    it warns when it is missing.
    """
    from worker.db.migrate import QUERY_TEXT_REVOKE_SQL

    engine = _admin_engine(database_admin_url)
    try:
        with engine.connect() as conn:
            for statement in QUERY_TEXT_REVOKE_SQL.split("; "):
                conn.execute(text(statement))
    finally:
        engine.dispose()


def drop_database(admin_url: str, db: ProvisionedDatabase) -> None:
    engine = _admin_engine(admin_url)
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)'))
        for role in (f"{db.name}_app", f"{db.name}_owner"):
            conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
    engine.dispose()


# -- the development database of `make run`, remembered per server ---------------------------------------

def development_database(admin_url: str, state_file: Path) -> dict[str, str]:
    """The database an earlier `make run` made on this server (admin URL), else a new one.

    ``state_file`` keeps one entry per server, so that switching between the machine's PostgreSQL and the
    embedded one (WORKER_DEV_EMBEDDED) reuses each server's database instead of leaving one behind per switch.
    """
    states = read_development_states(state_file)
    known = states.get(admin_url)
    if known is not None:
        if _database_exists(admin_url, known["name"]):
            return known
        # Dropped behind our back (or half made): its roles may still be there.
        drop_database(admin_url, _as_provisioned(admin_url, known))
    db = provision_database(admin_url, prefix="twdev")
    states[admin_url] = {"admin_url": admin_url, "name": db.name, "owner_url": db.owner_url,
                         "runtime_url": db.runtime_url}
    write_private_file(state_file, json.dumps({"servers": states}, indent=2))
    return states[admin_url]


def read_development_states(state_file: Path) -> dict[str, dict[str, str]]:
    """Admin URL -> {name, owner_url, runtime_url}; also reads the one-entry format of earlier versions."""
    try:
        data = json.loads(state_file.read_text())
    except FileNotFoundError:
        return {}
    except ValueError:
        return {}  # unreadable: start over rather than refuse to run
    if "servers" in data:
        return dict(data["servers"])
    return {data["admin_url"]: data} if "admin_url" in data and "name" in data else {}


def drop_development_databases(state_file: Path) -> list[str]:
    """Drop every database (and its roles) recorded in ``state_file`` whose server answers; return their names."""
    dropped = []
    for admin_url, state in read_development_states(state_file).items():
        try:
            drop_database(admin_url, _as_provisioned(admin_url, state))
        except OperationalError:
            continue  # that server is not running (an embedded one, for instance): nothing to drop now
        dropped.append(state["name"])
    state_file.unlink(missing_ok=True)
    return dropped


def _as_provisioned(admin_url: str, state: dict[str, str]) -> ProvisionedDatabase:
    return ProvisionedDatabase(state["name"], state["owner_url"], state["runtime_url"], admin_url)


def _database_exists(admin_url: str, name: str) -> bool:
    engine = create_engine(admin_url)
    try:
        with engine.connect() as conn:
            return bool(conn.execute(text("select 1 from pg_database where datname = :n"), {"n": name}).scalar())
    finally:
        engine.dispose()


def write_private_file(path: Path, content: str) -> None:
    """Write a file only its owner can read (it holds passwords), replacing any older one atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(content)
    os.replace(tmp, path)
