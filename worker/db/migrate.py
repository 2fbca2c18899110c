"""``migrate``: Alembic upgrade as the owner role, then least-privilege grants and a row-level security audit.

Everything runs in one transaction under an advisory lock, so two pods migrating at once queue up, and a
failed check leaves the database as it was.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from worker.db import MigrationError
from worker.db.engine import role_name, sqlalchemy_url
from worker.db.models import RLS_TABLES

log = logging.getLogger(__name__)

__all__ = ["MigrationError", "alembic_config", "apply_grants", "check_runtime_role", "current_revision", "migrate",
           "verify_row_security"]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Arbitrary constant shared by every migrate run ("tenant-w" in ASCII).
_LOCK_KEY = 0x74656E616E742D77
#: What the runtime role may do per table; nothing else in the database. Creating or deleting organizations
#: is not a worker's job, so ``organization`` is read-only for it.
RUNTIME_TABLE_PRIVILEGES: dict[str, tuple[str, ...]] = {
    table: ("SELECT",) if table == "organization" else ("SELECT", "INSERT", "UPDATE", "DELETE")
    for table in RLS_TABLES
}
_ALL_TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
#: What every policy compares the tenant column with (revision 0002): the sealed setting, once per statement.
CURRENT_ORG_SQL = "(select tenant_guard.current_organization())"
#: What the runtime role may execute in schema tenant_guard (it may read none of its tables).
GUARD_FUNCTIONS = ("tenant_guard.register_connection()", "tenant_guard.enter(text, text, text)",
                   "tenant_guard.current_organization()", "tenant_guard.check_user(text, text)",
                   "tenant_guard.execution_stalled_runs(integer)")
#: Relations are looked up in public before the session's temporary schema, which is otherwise searched first.
SEARCH_PATH = "public, pg_temp"
#: Catalog objects that show other sessions' statements (with their literal values) to any role of the same name.
QUERY_TEXT_VIEWS = ("pg_catalog.pg_stat_activity",)
QUERY_TEXT_FUNCTIONS = ("pg_catalog.pg_stat_get_activity(integer)", "pg_catalog.pg_stat_get_backend_activity(integer)")


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic configuration pointing at the packaged migrations; no alembic.ini needed."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _quote(connection: Connection, name: str) -> str:
    return connection.dialect.identifier_preparer.quote_identifier(name)


def check_runtime_role(connection: Connection, runtime: str, owner: str) -> None:
    """Refuse a runtime role that could skip row-level security."""
    row = connection.execute(text("select rolsuper, rolbypassrls, rolcreaterole from pg_roles where rolname = :r"),
                             {"r": runtime}).first()
    if row is None:
        raise MigrationError(f"runtime role {runtime!r} (the user in DATABASE_URL) does not exist; create it with "
                             "LOGIN NOSUPERUSER NOBYPASSRLS")
    if row.rolsuper:
        raise MigrationError(f"runtime role {runtime!r} is a superuser, so row-level security never applies to it; "
                             "use a NOSUPERUSER role in DATABASE_URL")
    if row.rolbypassrls:
        raise MigrationError(f"runtime role {runtime!r} has BYPASSRLS, so row-level security never applies to it; "
                             f"ALTER ROLE {runtime} NOBYPASSRLS or use another role")
    if row.rolcreaterole:
        raise MigrationError(f"runtime role {runtime!r} has CREATEROLE and could grant itself the owner role; "
                             f"ALTER ROLE {runtime} NOCREATEROLE")
    # Any role the runtime role can become (SET ROLE works even under NOINHERIT) must be harmless too.
    dangerous = connection.execute(text(
        "select r.rolname from pg_roles r where r.rolname <> :r and pg_has_role(:r, r.oid, 'MEMBER') and ("
        " r.rolsuper or r.rolbypassrls or r.rolcreaterole or r.rolname = :o"
        " or r.rolname in ('pg_read_server_files', 'pg_write_server_files', 'pg_execute_server_program')"
        " or exists (select 1 from pg_class c join pg_namespace n on n.oid = c.relnamespace"
        "            where c.relowner = r.oid and n.nspname = 'public' and c.relname = any(:tables)))"
        " order by 1"), {"r": runtime, "o": owner, "tables": list(RLS_TABLES)}).scalars().all()
    if runtime != owner and dangerous:
        raise MigrationError(f"runtime role {runtime!r} is a member of {', '.join(dangerous)} and could SET ROLE "
                             "to skip or disable row-level security; revoke those memberships")
    presets = connection.execute(text(
        "select array_to_string(s.setconfig, ', ') from pg_db_role_setting s "
        "left join pg_roles r on r.oid = s.setrole left join pg_database d on d.oid = s.setdatabase "
        "where (r.rolname = :r or s.setrole = 0) and (d.datname = current_database() or s.setdatabase = 0) "
        "and array_to_string(s.setconfig, ',') like '%app.current_%'"), {"r": runtime}).scalars().all()
    if presets:
        raise MigrationError(f"a default tenant is preset for {runtime!r} ({'; '.join(presets)}): every connection "
                             "without a tenant would see that organization; ALTER ROLE/DATABASE ... RESET it")
    owned = connection.execute(text(
        "select c.relname from pg_class c join pg_roles r on r.oid = c.relowner "
        "join pg_namespace n on n.oid = c.relnamespace "
        "where r.rolname = :r and n.nspname not in ('pg_catalog', 'information_schema') order by 1"),
        {"r": runtime}).scalars().all()
    if owned and runtime != owner:
        raise MigrationError(f"runtime role {runtime!r} owns {', '.join(owned)}; an owner can disable row-level "
                             "security, so the runtime role must own nothing")


def apply_grants(connection: Connection, runtime: str) -> None:
    """Reset the runtime role's rights to exactly RUNTIME_TABLE_PRIVILEGES (re-run on every migrate)."""
    role = _quote(connection, runtime)
    database = _quote(connection, connection.execute(text("select current_database()")).scalar_one())
    schema_owned = connection.execute(text(
        "select pg_has_role(current_user, nspowner, 'USAGE') from pg_namespace where nspname = 'public'")).scalar()
    if schema_owned:
        # Before PostgreSQL 15 every role may create objects in public (and then own them).
        connection.execute(text("REVOKE CREATE ON SCHEMA public FROM PUBLIC"))
    else:
        log.warning("the migration role does not own schema public; cannot revoke CREATE on it from PUBLIC")
    connection.execute(text(f"GRANT CONNECT ON DATABASE {database} TO {role}"))
    restrict_session_state(connection, runtime)
    connection.execute(text(f"GRANT USAGE ON SCHEMA tenant_guard TO {role}"))
    connection.execute(text(f"REVOKE ALL ON ALL TABLES IN SCHEMA tenant_guard FROM {role}"))
    for function in GUARD_FUNCTIONS:
        connection.execute(text(f"GRANT EXECUTE ON FUNCTION {function} TO {role}"))
    connection.execute(text(f"GRANT USAGE ON SCHEMA public TO {role}"))
    # Start from nothing so that rights granted by an earlier revision (or by hand) do not linger.
    connection.execute(text(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}"))
    connection.execute(text(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {role}"))
    for table, privileges in RUNTIME_TABLE_PRIVILEGES.items():
        connection.execute(text(f"GRANT {', '.join(privileges)} ON TABLE public.{_quote(connection, table)} "
                                f"TO {role}"))
    # UUID keys need no sequences today; a serial column added later gets what inserts need.
    sequences = connection.execute(text(
        "select distinct s.relname from pg_class s join pg_depend d on d.objid = s.oid and d.deptype in ('a', 'i') "
        "join pg_class t on t.oid = d.refobjid join pg_namespace n on n.oid = t.relnamespace "
        "where s.relkind = 'S' and n.nspname = 'public' and t.relname = any(:tables)"),
        {"tables": list(RLS_TABLES)}).scalars().all()
    for sequence in sequences:
        connection.execute(text(f"GRANT USAGE, SELECT ON SEQUENCE public.{_quote(connection, sequence)} TO {role}"))


def restrict_session_state(connection: Connection, runtime: str | None) -> None:
    """No temporary objects for the runtime role, and ``public`` before ``pg_temp`` for every new session.

    A temporary ``test_set`` would shadow ``public.test_set`` for the rest of the pooled connection's life,
    whoever borrows it next. The database owner may revoke what PUBLIC got by default; a TEMPORARY grant made by
    someone else survives and the catalog check then refuses.
    """
    database = _quote(connection, connection.execute(text("select current_database()")).scalar_one())
    if not connection.execute(text("select pg_has_role(current_user, datdba, 'USAGE') from pg_database "
                                   "where datname = current_database()")).scalar():
        log.warning("the migration role does not own the database; cannot revoke TEMPORARY or set search_path")
        return  # the catalog check names what is missing
    connection.execute(text(f"REVOKE TEMPORARY ON DATABASE {database} FROM PUBLIC"))
    if runtime is not None:
        connection.execute(text(f"REVOKE TEMPORARY ON DATABASE {database} FROM {_quote(connection, runtime)}"))
    # The database default is what DISCARD ALL / RESET ALL return to, so a reset connection keeps it.
    connection.execute(text(f"ALTER DATABASE {database} SET search_path = {SEARCH_PATH}"))


def query_text_readers(connection: Connection, runtime: str) -> list[str]:
    """The catalog objects through which ``runtime`` can read other sessions' statements (empty when none)."""
    readable = [view for view in QUERY_TEXT_VIEWS if connection.execute(
        text("select has_table_privilege(:r, :v, 'SELECT')"), {"r": runtime, "v": view}).scalar()]
    readable += [function for function in QUERY_TEXT_FUNCTIONS if connection.execute(
        text("select has_function_privilege(:r, :f, 'EXECUTE')"), {"r": runtime, "f": function}).scalar()]
    return readable


#: What an operator (a superuser) runs once in the application database; `worker.dev.provision` does the same.
QUERY_TEXT_REVOKE_SQL = (
    "REVOKE SELECT ON pg_catalog.pg_stat_activity FROM PUBLIC; "
    "REVOKE EXECUTE ON FUNCTION pg_catalog.pg_stat_get_activity(integer) FROM PUBLIC; "
    "REVOKE EXECUTE ON FUNCTION pg_catalog.pg_stat_get_backend_activity(integer) FROM PUBLIC; "
    "GRANT SELECT ON pg_catalog.pg_stat_activity TO pg_read_all_stats; "
    "GRANT EXECUTE ON FUNCTION pg_catalog.pg_stat_get_activity(integer) TO pg_read_all_stats; "
    "GRANT EXECUTE ON FUNCTION pg_catalog.pg_stat_get_backend_activity(integer) TO pg_read_all_stats")


def _normalize(expression: str | None) -> str:
    return re.sub(r"\s+", " ", (expression or "").strip().lower())


def verify_row_security(connection: Connection, runtime: str | None) -> None:
    """Every model table has RLS, FORCE and only the tenant policy; the runtime role has exactly its grants."""
    problems: list[str] = []
    for table in RLS_TABLES:
        problems += table_row_security_problems(connection, table)
    if runtime is not None:
        problems += runtime_rights_problems(connection, runtime)
    if problems:
        raise MigrationError("row-level security check failed:\n  " + "\n  ".join(problems))


def table_row_security_problems(connection: Connection, table: str) -> list[str]:
    """ENABLE and FORCE row-level security and only the tenant policy on ``table`` (``python -m worker doctor``
    reports each table on its own line)."""
    problems: list[str] = []
    column = "id" if table == "organization" else "organization_id"
    flags = connection.execute(text(
        "select c.relrowsecurity, c.relforcerowsecurity from pg_class c "
        "join pg_namespace n on n.oid = c.relnamespace where n.nspname = 'public' and c.relname = :t"),
        {"t": table}).first()
    if flags is None:
        return [f"table {table} is missing"]
    if not flags.relrowsecurity or not flags.relforcerowsecurity:
        problems.append(f"table {table} lacks ENABLE and FORCE ROW LEVEL SECURITY")
    # PostgreSQL stores the expression deparsed; this is its deparsed form of CURRENT_ORG_SQL.
    expected = _normalize(f"({column} = ( select tenant_guard.current_organization() as current_organization))")
    policies = connection.execute(text(
        "select policyname, permissive, cmd, qual, with_check from pg_policies "
        "where schemaname = 'public' and tablename = :t"), {"t": table}).all()
    if not policies:
        problems.append(f"table {table} has no row-level security policy")
    for policy in policies:
        if policy.permissive != "PERMISSIVE":
            continue  # a restrictive policy can only narrow what the tenant policy allows
        # Permissive policies are OR-ed: one looser expression (say "or the setting is empty") widens all.
        using_ok = policy.cmd == "INSERT" or _normalize(policy.qual) == expected
        check = policy.with_check if policy.with_check is not None else policy.qual
        check_ok = policy.cmd in ("SELECT", "DELETE") or _normalize(check) == expected
        if not (using_ok and check_ok):
            problems.append(f"policy {policy.policyname} on {table} is not the tenant policy "
                            f"(USING {policy.qual}; WITH CHECK {policy.with_check})")
    return problems


def runtime_rights_problems(connection: Connection, runtime: str) -> list[str]:
    """The runtime role holds exactly its table grants, cannot create in public, and cannot touch session state
    or the tenant keys."""
    problems: list[str] = []
    for table in RLS_TABLES:
        if connection.execute(text("select to_regclass(:t)"), {"t": f'public."{table}"'}).scalar() is None:
            continue  # reported as missing by table_row_security_problems
        wanted = set(RUNTIME_TABLE_PRIVILEGES[table])
        held = {p for p in _ALL_TABLE_PRIVILEGES if connection.execute(
            text("select has_table_privilege(:r, :t, :p)"), {"r": runtime, "t": f'public."{table}"', "p": p},
        ).scalar()}
        if held != wanted:
            problems.append(f"runtime role {runtime} holds {sorted(held)} on {table}, expected {sorted(wanted)}")
    if connection.execute(text("select has_schema_privilege(:r, 'public', 'CREATE')"), {"r": runtime}).scalar():
        problems.append(f"runtime role {runtime} may CREATE in schema public (granted by someone else?)")
    return problems + _session_state_problems(connection, runtime)


def _session_state_problems(connection: Connection, runtime: str) -> list[str]:
    problems = []
    if connection.execute(text("select has_database_privilege(:r, current_database(), 'TEMPORARY')"),
                          {"r": runtime}).scalar():
        problems.append(f"runtime role {runtime} may create temporary tables, which shadow the tenant tables on a "
                        "pooled connection (TEMPORARY granted by someone other than the database owner?)")
    readable = connection.execute(text(
        "select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace "
        "where n.nspname = 'tenant_guard' and has_table_privilege(:r, c.oid, 'SELECT,INSERT,UPDATE,DELETE') "
        "order by 1"), {"r": runtime}).scalars().all()
    if readable:
        problems.append(f"runtime role {runtime} may touch tenant_guard.{', tenant_guard.'.join(readable)}, which "
                        "holds the connection keys that seal the tenant setting")
    for function in GUARD_FUNCTIONS:
        if connection.execute(text("select to_regprocedure(:f) is null"), {"f": function}).scalar():
            problems.append(f"function {function} is missing")
        elif not connection.execute(text("select has_function_privilege(:r, :f, 'EXECUTE')"),
                                    {"r": runtime, "f": function}).scalar():
            problems.append(f"runtime role {runtime} may not execute {function}")
    defaults = connection.execute(text(
        "select array_to_string(s.setconfig, ',') from pg_db_role_setting s "
        "where s.setdatabase = (select oid from pg_database where datname = current_database()) "
        "and s.setrole = 0")).scalar() or ""
    if f"search_path={SEARCH_PATH}" not in defaults.replace('"', ""):
        problems.append(f"database default search_path is not {SEARCH_PATH!r} ({defaults or 'none'})")
    return problems


def migrate(migration_url: str, runtime_url: str, *, allow_owner_runtime: bool = False) -> None:
    """Upgrade to head as the role in ``migration_url``, then grant the role in ``runtime_url`` what it needs.

    Raises MigrationError, with nothing committed, when the runtime role is a superuser, has BYPASSRLS, owns
    objects, can become the owner, or is the migration role itself (allowed only with ``allow_owner_runtime``,
    for throwaway development databases; FORCE RLS still applies to it, but an owner can switch RLS off).
    """
    runtime = role_name(runtime_url)
    if not runtime:
        raise MigrationError("DATABASE_URL names no user; the runtime role must be explicit")
    engine = create_engine(sqlalchemy_url(migration_url), poolclass=NullPool)
    try:
        with engine.begin() as connection:
            connection.execute(text("select pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
            owner = connection.execute(text("select current_user")).scalar_one()
            same_role = runtime == owner
            if same_role and not allow_owner_runtime:
                raise MigrationError(
                    f"DATABASE_URL and MIGRATION_DATABASE_URL use the same role {owner!r}: the runtime role would "
                    "own the tables and could switch row-level security off. Set MIGRATION_DATABASE_URL to the "
                    "owner role and DATABASE_URL to a separate runtime role (or, for a throwaway development "
                    "database only, pass --allow-owner-runtime)")
            check_runtime_role(connection, runtime, owner)
            command.upgrade(alembic_config(connection), "head")
            if same_role:
                log.warning("RUNTIME ROLE %r OWNS THE TABLES: tenant isolation rests on FORCE ROW LEVEL SECURITY "
                            "alone and the role can switch it off. Never run like this outside development.", owner)
                restrict_session_state(connection, None)
            else:
                apply_grants(connection, runtime)
            verify_row_security(connection, None if same_role else runtime)
            readers = [] if same_role else query_text_readers(connection, runtime)
            if readers:
                # Only a superuser can revoke these, and migrate runs as the owner: an operator step.
                log.warning("runtime role %r can read other sessions' statements through %s; run as a superuser "
                            "in this database: %s (see docs/database.md)", runtime, ", ".join(readers),
                            QUERY_TEXT_REVOKE_SQL)
    finally:
        engine.dispose()
    log.info("database migrated; runtime role %s granted %s", runtime,
             "nothing (it is the owner)" if same_role else "tenant table access")


def current_revision(url: str) -> str | None:
    """The applied Alembic revision, or None for an unmigrated database."""
    engine = create_engine(sqlalchemy_url(url), poolclass=NullPool)
    try:
        with engine.connect() as connection:
            if connection.execute(text("select to_regclass('public.alembic_version')")).scalar() is None:
                return None
            return connection.execute(text("select version_num from alembic_version")).scalar()
    finally:
        engine.dispose()
