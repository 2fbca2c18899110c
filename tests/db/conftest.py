"""Fixtures for the database layer: real PostgreSQL, one migrated database per session, throwaway ones on demand."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from worker.db.engine import reset_engines
from worker.db.migrate import migrate
from worker.db.models import Organization, Test, TestSet
from worker.db.session import tenant_session
from worker.dev.provision import ProvisionedDatabase, drop_database, provision_database


@pytest.fixture(scope="session")
def pgdb(pg_admin_url: str) -> Iterator[ProvisionedDatabase]:
    """This package's own migrated database, so that row counts are not shared with other test modules."""
    db = provision_database(pg_admin_url, prefix="twdbtest")
    try:
        migrate(db.owner_url, db.runtime_url)
        yield db
    finally:
        reset_engines()
        drop_database(pg_admin_url, db)


@pytest.fixture
def make_database(pg_admin_url: str) -> Iterator[Callable[..., ProvisionedDatabase]]:
    """Throwaway databases (optionally migrated) for tests that change the schema or the roles."""
    made: list[ProvisionedDatabase] = []

    def make(migrated: bool = True) -> ProvisionedDatabase:
        db = provision_database(pg_admin_url, prefix="twdbtmp")
        made.append(db)
        if migrated:
            migrate(db.owner_url, db.runtime_url)
        return db

    yield make
    reset_engines()
    for db in made:
        drop_database(pg_admin_url, db)


@pytest.fixture
def admin_role(pg_admin_url: str) -> Iterator[Callable[[str], str]]:
    """Create a role with the given attributes (e.g. 'SUPERUSER'); dropped afterwards."""
    engine = create_engine(pg_admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    made: list[str] = []

    def make(attributes: str) -> str:
        name = f"twdbrole_{uuid.uuid4().hex[:8]}"
        with engine.connect() as conn:
            conn.execute(text(f'CREATE ROLE "{name}" LOGIN {attributes}'))
        made.append(name)
        return name

    yield make
    with engine.connect() as conn:
        for name in made:
            conn.execute(text(f'DROP ROLE IF EXISTS "{name}"'))
    engine.dispose()


def url_for_role(url: str, role: str) -> str:
    return make_url(url).set(username=role, password=None).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def owner_engine(pgdb: ProvisionedDatabase) -> Iterator[Engine]:
    engine = create_engine(pgdb.owner_url, poolclass=NullPool)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def runtime_engine(pgdb: ProvisionedDatabase) -> Iterator[Engine]:
    engine = create_engine(pgdb.runtime_url, pool_size=2, max_overflow=0)
    yield engine
    engine.dispose()


@dataclass(frozen=True)
class Seeded:
    org_a: str
    org_b: str
    set_a: str  # one of A's test sets
    set_b: str
    sets: dict[str, int]  # organization -> number of test sets
    tests: dict[str, int]  # organization -> number of tests


def seed(engine: Engine, test_sets: dict[str, list[int]]) -> dict[str, list[str]]:
    """Insert organizations with test sets of the given sizes through tenant sessions; returns set ids per org."""
    ids: dict[str, list[str]] = {}
    for org, sizes in test_sets.items():
        with tenant_session(org, None, engine=engine) as db:
            db.add(Organization(id=uuid.UUID(org), name=f"org {org[:8]}"))
            db.flush()
            ids[org] = []
            for i, size in enumerate(sizes):
                test_set = TestSet(organization_id=uuid.UUID(org), name=f"set {i}")
                db.add(test_set)
                db.flush()
                db.add_all(Test(organization_id=uuid.UUID(org), test_set_id=test_set.id, prompt=f"p{j}")
                           for j in range(size))
                ids[org].append(str(test_set.id))
    return ids


@pytest.fixture(scope="session")
def seeded(owner_engine: Engine) -> Seeded:
    """Two organizations in the session database: A with 2 sets (3 tests), B with 1 set (1 test)."""
    org_a, org_b = str(uuid.uuid4()), str(uuid.uuid4())
    ids = seed(owner_engine, {org_a: [2, 1], org_b: [1]})
    return Seeded(org_a, org_b, ids[org_a][0], ids[org_b][0], {org_a: 2, org_b: 1}, {org_a: 3, org_b: 1})


@pytest.fixture
def two_tenants(make_database):  # type: ignore[no-untyped-def]
    """A migrated throwaway database with A (2 sets) and B (1 set)."""
    db = make_database()
    org_a, org_b = str(uuid.uuid4()), str(uuid.uuid4())
    owner = create_engine(db.owner_url, poolclass=NullPool)
    seed(owner, {org_a: [1, 1], org_b: [1]})
    owner.dispose()
    yield db, org_a, org_b
    reset_engines()


def disable_rls(db: ProvisionedDatabase) -> None:
    """Switch row-level security off on every tenant table: the ORM criteria are then the only filter."""
    from worker.db.models import RLS_TABLES

    admin = create_engine(db.admin_url, poolclass=NullPool)
    with admin.begin() as conn:
        for table in RLS_TABLES:
            conn.execute(text(f'alter table "{table}" no force row level security'))
            conn.execute(text(f'alter table "{table}" disable row level security'))
    admin.dispose()


def run_on_threads(target: Callable[[str], None], orgs: Iterable[str]) -> None:
    """``target(org)`` on a thread of its own per organization, all at once; returns when every one has ended."""
    threads = [threading.Thread(target=target, args=(org,)) for org in orgs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
