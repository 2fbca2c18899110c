"""Sealed tenant setting: policies trust ``app.current_organization`` only with a seal task SQL cannot forge.

Revision ID: 0002
Revises: 0001
Create Date: 2025-02-01

Until 0001 any SQL on a runtime connection could ``set_config('app.current_organization', <other org>, true)``
and read that organization. Now:

- ``tenant_guard.register_connection()`` gives each new backend a random key, once: the worker calls it when it
  opens the connection, before any task's SQL can run there, and keeps the key in Python. A second call on the
  same backend (a task's SQL trying to learn the key) is refused. The keys live in an owner-only table.
- ``tenant_guard.enter(org, user, proof)`` checks ``proof = sha256(key || sha256(org || '/' || user))`` (a fixed
  length inner digest, so no length extension) against the key of this backend and only then sets the two
  settings plus ``app.tenant_seal``, a digest of the key, the organization and the transaction start.
- ``tenant_guard.current_organization()`` returns the organization only when the seal matches; the policies
  compare against it, evaluated once per statement (``(select ...)`` makes it an init plan).

Everything in ``tenant_guard`` is SECURITY DEFINER owned by the migration role, with a fixed search_path.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("organization", "user", "test_set", "test", "endpoint", "test_configuration", "test_run", "test_result")
SEALED_ORG = "(select tenant_guard.current_organization())"
OLD_ORG = "nullif(current_setting('app.current_organization', true), '')::uuid"

# A digest of the settings that only the holder of this backend's key can produce. The transaction start is
# part of it, so a seal is worth nothing outside the transaction it was made in.
_SEAL = ("encode(sha256(k.key || sha256(convert_to(coalesce(current_setting('app.current_organization', true), '')"
         " || '/' || extract(epoch from transaction_timestamp())::text, 'UTF8'))), 'hex')")


def _policy(table: str, expression: str) -> None:
    column = "id" if table == "organization" else "organization_id"
    op.execute(f'DROP POLICY tenant_isolation ON "{table}"')
    op.execute(f'CREATE POLICY tenant_isolation ON "{table}" FOR ALL '
               f"USING ({column} = {expression}) WITH CHECK ({column} = {expression})")


def upgrade() -> None:
    op.execute("CREATE SCHEMA tenant_guard")
    op.execute("REVOKE ALL ON SCHEMA tenant_guard FROM PUBLIC")
    # One row per live backend that registered; rows of ended backends are removed at the next registration.
    op.execute("CREATE TABLE tenant_guard.connection_key ("
               " pid integer PRIMARY KEY, key bytea NOT NULL, registered_at timestamptz NOT NULL DEFAULT now())")
    op.execute("REVOKE ALL ON tenant_guard.connection_key FROM PUBLIC")
    op.execute("""
CREATE FUNCTION tenant_guard.register_connection() RETURNS bytea
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  new_key bytea := uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid());
  inserted integer;
BEGIN
  DELETE FROM tenant_guard.connection_key k
   WHERE k.pid NOT IN (SELECT pg_stat_get_backend_pid(b) FROM pg_stat_get_backend_idset() AS b);
  INSERT INTO tenant_guard.connection_key (pid, key) VALUES (pg_backend_pid(), new_key)
    ON CONFLICT (pid) DO NOTHING;
  GET DIAGNOSTICS inserted = ROW_COUNT;
  IF inserted = 0 THEN
    RAISE EXCEPTION 'this database connection already has its tenant key' USING ERRCODE = '42501';
  END IF;
  RETURN new_key;
END $$""")
    op.execute(f"""
CREATE FUNCTION tenant_guard.enter(organization text, usr text, proof text) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  conn_key bytea;
  k record;
BEGIN
  SELECT c.key INTO conn_key FROM tenant_guard.connection_key c WHERE c.pid = pg_backend_pid();
  IF conn_key IS NULL OR proof IS DISTINCT FROM
      encode(sha256(conn_key || sha256(convert_to(organization || '/' || coalesce(usr, ''), 'UTF8'))), 'hex') THEN
    RAISE EXCEPTION 'tenant proof rejected for this connection' USING ERRCODE = '42501';
  END IF;
  PERFORM set_config('app.current_organization', organization, true),
          set_config('app.current_user', coalesce(usr, ''), true);
  SELECT conn_key AS key INTO k;
  PERFORM set_config('app.tenant_seal', {_SEAL}, true);
END $$""")
    op.execute(f"""
CREATE FUNCTION tenant_guard.current_organization() RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
  SELECT nullif(current_setting('app.current_organization', true), '')::uuid
    FROM tenant_guard.connection_key k
   WHERE k.pid = pg_backend_pid() AND current_setting('app.tenant_seal', true) = {_SEAL}
$$""")
    for function in ("register_connection()", "enter(text, text, text)", "current_organization()"):
        op.execute(f"REVOKE ALL ON FUNCTION tenant_guard.{function} FROM PUBLIC")
    for table in TABLES:
        _policy(table, SEALED_ORG)


def downgrade() -> None:
    for table in TABLES:
        _policy(table, OLD_ORG)
    op.execute("DROP SCHEMA tenant_guard CASCADE")
