"""What the migration leaves in the catalog: RLS on every tenant table, the policy text, the runtime role's rights."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, text
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.pool import NullPool

from worker.db import MigrationError
from worker.db.migrate import RUNTIME_TABLE_PRIVILEGES, migrate
from worker.db.models import RLS_TABLES, TENANT_TABLES, Base

EXPECTED_EXPR = " select tenant_guard.current_organization() as current_organization)"
ALL_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")


def _admin(db):  # type: ignore[no-untyped-def]
    return create_engine(db.admin_url, poolclass=NullPool)


def _role(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).username


def test_every_table_with_organization_id_is_under_forced_rls(pgdb) -> None:
    """Read from the migrated catalog, not from the models: a table that a migration adds with an
    organization_id column but no policy (or no FORCE) is a tenant leak even if no model knows it."""
    engine = _admin(pgdb)
    with engine.connect() as conn:
        rows = conn.execute(text(
            "select c.relname, c.relkind, c.relrowsecurity, c.relforcerowsecurity, col.is_nullable, "
            "(select count(*) from pg_policy p where p.polrelid = c.oid) as policies "
            "from information_schema.columns col "
            "join pg_class c on c.relname = col.table_name and c.relnamespace = 'public'::regnamespace "
            "where col.table_schema = 'public' and col.column_name = 'organization_id'")).all()
    engine.dispose()
    assert rows, "no table of the migrated database has an organization_id column"
    for row in rows:
        assert row.relrowsecurity and row.relforcerowsecurity and row.policies > 0, row
        assert row.is_nullable == "NO", row
    # The ORM's tenant filter (worker/db/criteria.py) covers exactly these tables.
    assert {row.relname for row in rows} == set(TENANT_TABLES)


def test_row_level_security_enabled_and_forced(pgdb) -> None:
    engine = _admin(pgdb)
    with engine.connect() as conn:
        rows = conn.execute(text(
            "select c.relname, c.relrowsecurity, c.relforcerowsecurity from pg_class c "
            "join pg_namespace n on n.oid = c.relnamespace where n.nspname = 'public' and c.relkind = 'r' "
            "and c.relname <> 'alembic_version'")).all()
    engine.dispose()
    assert {r.relname for r in rows} == set(RLS_TABLES)
    for row in rows:
        assert row.relrowsecurity and row.relforcerowsecurity, row


def test_policies_use_the_sealed_tenant_in_using_and_with_check(pgdb) -> None:
    engine = _admin(pgdb)
    with engine.connect() as conn:
        policies = conn.execute(text(
            "select tablename, permissive, roles, cmd, qual, with_check from pg_policies "
            "where schemaname = 'public'")).all()
    engine.dispose()
    assert {p.tablename for p in policies} == set(RLS_TABLES)
    assert len(policies) == len(RLS_TABLES)  # exactly one policy each: no "empty means trusted" extra
    for policy in policies:
        column = "id" if policy.tablename == "organization" else "organization_id"
        expected = f"({column} = ({EXPECTED_EXPR})".lower()
        assert policy.permissive == "PERMISSIVE" and policy.cmd == "ALL" and policy.roles == ["public"]
        assert policy.qual.lower() == expected, policy
        assert policy.with_check.lower() == expected, policy


def test_runtime_role_is_powerless(pgdb) -> None:
    runtime, owner = _role(pgdb.runtime_url), _role(pgdb.owner_url)
    engine = _admin(pgdb)
    with engine.connect() as conn:
        role = conn.execute(text("select rolsuper, rolbypassrls, rolcreaterole, rolcreatedb from pg_roles "
                                 "where rolname = :r"), {"r": runtime}).one()
        assert not any(role)
        owned = conn.execute(text("select count(*) from pg_class c join pg_roles r on r.oid = c.relowner "
                                  "where r.rolname = :r"), {"r": runtime}).scalar()
        assert owned == 0
        assert not conn.execute(text("select pg_has_role(:r, :o, 'MEMBER')"), {"r": runtime, "o": owner}).scalar()
        # Tables are owned by the migration role, which FORCE RLS filters as well.
        owners = set(conn.execute(text("select distinct tableowner from pg_tables where schemaname = 'public'"))
                     .scalars())
        assert owners == {owner}
        for table in (*RLS_TABLES, "alembic_version"):
            held = {p for p in ALL_PRIVILEGES if conn.execute(
                text("select has_table_privilege(:r, :t, :p)"), {"r": runtime, "t": f'public."{table}"', "p": p},
            ).scalar()}
            assert held == set(RUNTIME_TABLE_PRIVILEGES.get(table, ())), table
        assert conn.execute(text("select has_schema_privilege(:r, 'public', 'USAGE')"), {"r": runtime}).scalar()
        assert not conn.execute(text("select has_schema_privilege(:r, 'public', 'CREATE')"), {"r": runtime}).scalar()
        assert not conn.execute(text("select has_database_privilege(:r, current_database(), 'CREATE')"),
                                {"r": runtime}).scalar()
        # A temporary table would shadow a tenant table on a pooled connection for every later borrower.
        assert not conn.execute(text("select has_database_privilege(:r, current_database(), 'TEMPORARY')"),
                                {"r": runtime}).scalar()
        assert not conn.execute(text("select has_database_privilege('public', current_database(), 'TEMPORARY')"),
                                {"r": runtime}).scalar()
        assert not conn.execute(text("select has_table_privilege(:r, 'tenant_guard.connection_key', "
                                     "'SELECT,INSERT,UPDATE,DELETE')"), {"r": runtime}).scalar()
    engine.dispose()


def test_runtime_role_cannot_create_or_alter(pgdb, runtime_engine) -> None:
    for statement in ("create table public.sneaky (id int)", "alter table test_set disable row level security",
                      "truncate test_set", "insert into organization (name) values ('x')"):
        with runtime_engine.connect() as conn, pytest.raises(ProgrammingError) as caught:
            conn.execute(text(statement))
        assert caught.value.orig.pgcode == "42501", (statement, caught.value)  # insufficient privilege or not owner


def test_models_and_migrations_agree(pgdb) -> None:
    engine = create_engine(pgdb.owner_url, poolclass=NullPool)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        diff = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert diff == []


def _catalog_snapshot(db) -> dict:  # type: ignore[no-untyped-def]
    engine = _admin(db)
    with engine.connect() as conn:
        snapshot = {
            "version": conn.execute(text("select version_num from alembic_version")).scalars().all(),
            "policies": conn.execute(text("select tablename, policyname, qual, with_check from pg_policies "
                                          "order by 1, 2")).all(),
            "grants": conn.execute(text("select grantee, table_name, privilege_type from "
                                        "information_schema.role_table_grants where table_schema = 'public' "
                                        "order by 1, 2, 3")).all(),
            "tables": conn.execute(text("select relname, relrowsecurity, relforcerowsecurity from pg_class "
                                        "where relnamespace = 'public'::regnamespace order by 1")).all(),
        }
    engine.dispose()
    return snapshot


def test_migrate_twice_is_a_no_op(make_database) -> None:
    db = make_database()
    before = _catalog_snapshot(db)
    migrate(db.owner_url, db.runtime_url)
    assert _catalog_snapshot(db) == before
    assert before["version"] == ["0007"]


def test_migrate_reapplies_grants_and_removes_extra_rights(make_database) -> None:
    db = make_database()
    owner = create_engine(db.owner_url, poolclass=NullPool)
    runtime = _role(db.runtime_url)
    with owner.begin() as conn:
        conn.execute(text(f'revoke all on test_run from "{runtime}"'))
        conn.execute(text(f'grant truncate, references on test_set to "{runtime}"'))
        conn.execute(text(f'grant select on alembic_version to "{runtime}"'))
    migrate(db.owner_url, db.runtime_url)
    with owner.connect() as conn:
        def held(table: str) -> set[str]:
            return {p for p in ALL_PRIVILEGES if conn.execute(
                text("select has_table_privilege(:r, :t, :p)"), {"r": runtime, "t": table, "p": p}).scalar()}

        assert held("test_run") == {"SELECT", "INSERT", "UPDATE", "DELETE"}
        assert held("test_set") == {"SELECT", "INSERT", "UPDATE", "DELETE"}
        assert held("alembic_version") == set()
    owner.dispose()


@pytest.mark.parametrize("attributes", ["SUPERUSER", "BYPASSRLS"])
def test_migrate_refuses_a_runtime_role_that_skips_rls(pgdb, admin_role, attributes: str) -> None:
    from tests.db.conftest import url_for_role

    role = admin_role(attributes)
    with pytest.raises(MigrationError, match=attributes.lower() if attributes == "SUPERUSER" else "BYPASSRLS"):
        migrate(pgdb.owner_url, url_for_role(pgdb.runtime_url, role))


def test_migrate_refuses_runtime_role_that_can_become_owner(pgdb, admin_role, pg_admin_url) -> None:
    from tests.db.conftest import url_for_role

    role = admin_role("")
    engine = create_engine(pg_admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with engine.connect() as conn:
        conn.execute(text(f'grant "{_role(pgdb.owner_url)}" to "{role}"'))
    with pytest.raises(MigrationError, match=f"is a member of {_role(pgdb.owner_url)} and could SET ROLE"):
        migrate(pgdb.owner_url, url_for_role(pgdb.runtime_url, role))
    with engine.connect() as conn:
        conn.execute(text(f'revoke "{_role(pgdb.owner_url)}" from "{role}"'))
    engine.dispose()


@pytest.mark.parametrize(("setup", "message"), [
    ('alter role "{role}" createrole', "has CREATEROLE"),
    ('create role "{role}_su" superuser nologin; grant "{role}_su" to "{role}"', "_su and could SET ROLE"),
    ('create role "{role}_rls" bypassrls nologin; alter role "{role}" noinherit; grant "{role}_rls" to "{role}"',
     "_rls and could SET ROLE"),
    ('grant pg_read_server_files to "{role}"', "pg_read_server_files"),
    ("alter role \"{role}\" set app.current_organization = '6f1c9a43-58f3-4a0e-9d7b-3c0f4a3c2b11'",
     "a default tenant is preset"),
])
def test_migrate_refuses_runtime_roles_that_can_escape_rls(pgdb, admin_role, pg_admin_url, setup, message) -> None:
    from tests.db.conftest import url_for_role

    role = admin_role("")
    engine = create_engine(pg_admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with engine.connect() as conn:
            for statement in setup.format(role=role).split(";"):
                conn.execute(text(statement))
        with pytest.raises(MigrationError, match=message):
            migrate(pgdb.owner_url, url_for_role(pgdb.runtime_url, role))
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'alter role "{role}" nocreaterole inherit'))
            conn.execute(text(f'alter role "{role}" reset all'))
            conn.execute(text(f'revoke pg_read_server_files from "{role}"'))
            for suffix in ("_su", "_rls"):
                conn.execute(text(f'drop role if exists "{role}{suffix}"'))
        engine.dispose()


def test_migrate_refuses_a_missing_runtime_role(pgdb) -> None:
    from tests.db.conftest import url_for_role

    with pytest.raises(MigrationError, match="does not exist"):
        migrate(pgdb.owner_url, url_for_role(pgdb.runtime_url, "twdb_no_such_role"))


def test_migrate_refuses_the_owner_as_runtime_role_unless_allowed(make_database, caplog) -> None:
    db = make_database(migrated=False)
    with pytest.raises(MigrationError, match="same role"):
        migrate(db.owner_url, db.owner_url)
    engine = _admin(db)
    with engine.connect() as conn:  # refused before anything was applied
        assert conn.execute(text("select to_regclass('public.alembic_version')")).scalar() is None
    engine.dispose()
    migrate(db.owner_url, db.owner_url, allow_owner_runtime=True)
    assert "OWNS THE TABLES" in caplog.text


def test_migrate_detects_a_table_without_forced_rls(make_database, pg_admin_url) -> None:
    db = make_database()
    engine = _admin(db)
    with engine.begin() as conn:
        conn.execute(text("alter table test no force row level security"))
        conn.execute(text("create policy trusted_when_empty on test_set "
                          "using (current_setting('app.current_organization', true) = '')"))
    engine.dispose()
    with pytest.raises(MigrationError) as caught:
        migrate(db.owner_url, db.runtime_url)
    assert "table test lacks ENABLE and FORCE" in str(caught.value)
    assert "policy trusted_when_empty on test_set" in str(caught.value)
