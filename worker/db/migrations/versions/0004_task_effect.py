"""Exactly-once database effects: ``task_effect`` holds one marker per (organization, task id).

Revision ID: 0004
Revises: 0003
Create Date: 2025-04-01

Delivery is at least once (late acknowledgements, dead-worker recovery): a task killed after committing its
effect but before its acknowledgement runs again. ``worker.db.once.run_once`` inserts the task id here in the
same transaction as the effect; a second delivery finds the marker and skips the effect. A tenant table like the
others: FORCE row-level security with the sealed tenant policy of revision 0002.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SEALED_ORG = "(select tenant_guard.current_organization())"


def upgrade() -> None:
    op.create_table(
        "task_effect",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("task_id", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("organization_id", "task_id", name="pk_task_effect"),
        sa.ForeignKeyConstraint(["organization_id"], ["organization.id"], ondelete="CASCADE",
                                name="fk_task_effect_organization_id_organization"),
    )
    op.execute("ALTER TABLE task_effect ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE task_effect FORCE ROW LEVEL SECURITY")
    op.execute("CREATE POLICY tenant_isolation ON task_effect FOR ALL "
               f"USING (organization_id = {SEALED_ORG}) WITH CHECK (organization_id = {SEALED_ORG})")


def downgrade() -> None:
    op.drop_table("task_effect")
