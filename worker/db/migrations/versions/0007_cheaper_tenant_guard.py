"""The tenant guard's per-transaction and per-statement work made cheaper, with the same rules.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01

``tenant_guard.current_organization()`` (revision 0002) was a SQL function with a ``SET search_path`` clause. A
SQL function with a SET clause is never inlined and re-plans its body every time a statement calls it, which is
every statement on a tenant table (the policies make it an init plan): about 70 µs of planning per statement,
more than the query it guards. The same function in plpgsql keeps its plan for the life of the connection.
The rule is unchanged: the organization is returned only when ``app.tenant_seal`` matches the digest of this
backend's key, the organization and the transaction start (see revision 0002).

``tenant_guard.enter`` now also refuses a user of another organization (``check_user``'s rule from revision 0003,
SQLSTATE TW001), so the worker calls one SECURITY DEFINER function per transaction instead of two, and it writes the
three settings in one statement. ``check_user`` stays for callers that still call both.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Revision 0002's seal, unchanged; the function must return exactly what the old one returned.
_SEAL = ("encode(sha256(k.key || sha256(convert_to(coalesce(current_setting('app.current_organization', true), '')"
         " || '/' || extract(epoch from transaction_timestamp())::text, 'UTF8'))), 'hex')")


FOREIGN_USER_SQLSTATE = "TW001"

_ENTER_0002 = f"""
CREATE OR REPLACE FUNCTION tenant_guard.enter(organization text, usr text, proof text) RETURNS void
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
END $$"""


def upgrade() -> None:
    # DROP + CREATE would drop the policies that call it; CREATE OR REPLACE keeps them and the grants.
    op.execute(f"""
CREATE OR REPLACE FUNCTION tenant_guard.current_organization() RETURNS uuid
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  organization uuid;
BEGIN
  SELECT nullif(current_setting('app.current_organization', true), '')::uuid INTO organization
    FROM tenant_guard.connection_key k
   WHERE k.pid = pg_backend_pid() AND current_setting('app.tenant_seal', true) = {_SEAL};
  RETURN organization;
END $$""")
    # The seal is the expression of revision 0002 with the organization just set, so current_organization()
    # accepts it exactly as before.
    op.execute(f"""
CREATE OR REPLACE FUNCTION tenant_guard.enter(organization text, usr text, proof text) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  conn_key bytea;
BEGIN
  SELECT c.key INTO conn_key FROM tenant_guard.connection_key c WHERE c.pid = pg_backend_pid();
  IF conn_key IS NULL OR proof IS DISTINCT FROM
      encode(sha256(conn_key || sha256(convert_to(organization || '/' || coalesce(usr, ''), 'UTF8'))), 'hex') THEN
    RAISE EXCEPTION 'tenant proof rejected for this connection' USING ERRCODE = '42501';
  END IF;
  IF coalesce(usr, '') <> '' AND EXISTS (
      SELECT 1 FROM tenant_guard.user_organization u
       WHERE u.id = usr::uuid AND u.organization_id IS DISTINCT FROM organization::uuid) THEN
    RAISE EXCEPTION 'user_id % is a user of another organization than %', usr, organization
      USING ERRCODE = '{FOREIGN_USER_SQLSTATE}';
  END IF;
  PERFORM set_config('app.current_organization', organization, true),
          set_config('app.current_user', coalesce(usr, ''), true),
          set_config('app.tenant_seal', encode(sha256(conn_key || sha256(convert_to(
            coalesce(organization, '') || '/' || extract(epoch from transaction_timestamp())::text, 'UTF8'))), 'hex'),
            true);
END $$""")


def downgrade() -> None:
    op.execute(_ENTER_0002)
    op.execute(f"""
CREATE OR REPLACE FUNCTION tenant_guard.current_organization() RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
  SELECT nullif(current_setting('app.current_organization', true), '')::uuid
    FROM tenant_guard.connection_key k
   WHERE k.pid = pg_backend_pid() AND current_setting('app.tenant_seal', true) = {_SEAL}
$$""")
