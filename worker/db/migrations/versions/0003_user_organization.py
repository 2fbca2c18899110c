"""Which organization each user belongs to, readable by ``tenant_guard`` across tenants: refuse a foreign user.

Revision ID: 0003
Revises: 0002
Create Date: 2025-03-01

A message may pair organization A with a user of organization B. Row-level security hides B's users from a
session of A (and FORCE hides them from the owner too), so no tenant-scoped query can tell "a user of B" from
"a user this database does not know". ``tenant_guard.user_organization`` (owner-only, like the connection keys)
mirrors ``user.id -> organization_id``, kept by a trigger; ``tenant_guard.check_user(org, user)`` raises
SQLSTATE ``TW001`` when the user belongs to another organization. The worker calls it in the same statement as
``tenant_guard.enter`` (worker/db/guard.py), so the check costs no extra round trip. Unknown users pass:
producers may name users this database does not hold.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FOREIGN_USER_SQLSTATE = "TW001"


def upgrade() -> None:
    op.execute("CREATE TABLE tenant_guard.user_organization (id uuid PRIMARY KEY, organization_id uuid NOT NULL)")
    op.execute("REVOKE ALL ON tenant_guard.user_organization FROM PUBLIC")
    # FORCE row-level security hides every user from us, the owner, too: lift it for the copy only.
    op.execute('ALTER TABLE "user" NO FORCE ROW LEVEL SECURITY')
    op.execute("INSERT INTO tenant_guard.user_organization (id, organization_id) "
               'SELECT id, organization_id FROM "user"')
    op.execute('ALTER TABLE "user" FORCE ROW LEVEL SECURITY')
    op.execute("""
CREATE FUNCTION tenant_guard.track_user() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') THEN
    DELETE FROM tenant_guard.user_organization WHERE id = OLD.id;
  END IF;
  IF TG_OP IN ('INSERT', 'UPDATE') THEN
    INSERT INTO tenant_guard.user_organization (id, organization_id) VALUES (NEW.id, NEW.organization_id);
  END IF;
  RETURN NULL;
END $$""")
    op.execute("REVOKE ALL ON FUNCTION tenant_guard.track_user() FROM PUBLIC")
    op.execute('CREATE TRIGGER user_organization AFTER INSERT OR UPDATE OF id, organization_id OR DELETE ON "user" '
               "FOR EACH ROW EXECUTE FUNCTION tenant_guard.track_user()")
    op.execute(f"""
CREATE FUNCTION tenant_guard.check_user(organization text, usr text) RETURNS void
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  IF coalesce(usr, '') <> '' AND EXISTS (
      SELECT 1 FROM tenant_guard.user_organization u
       WHERE u.id = usr::uuid AND u.organization_id IS DISTINCT FROM organization::uuid) THEN
    RAISE EXCEPTION 'user_id % is a user of another organization than %', usr, organization
      USING ERRCODE = '{FOREIGN_USER_SQLSTATE}';
  END IF;
END $$""")
    op.execute("REVOKE ALL ON FUNCTION tenant_guard.check_user(text, text) FROM PUBLIC")


def downgrade() -> None:
    op.execute('DROP TRIGGER user_organization ON "user"')
    op.execute("DROP FUNCTION tenant_guard.check_user(text, text)")
    op.execute("DROP FUNCTION tenant_guard.track_user()")
    op.execute("DROP TABLE tenant_guard.user_organization")
