"""Execution lanes: a run's concurrency cap split into leased shares.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30

``test_run_lane`` holds one row per lane of a run (``lane`` 0 .. lanes-1, each with its ``share`` of the run's
cap, fixed when the run's lanes are first made, so workers configured differently still split one cap). A lane
task leases its row for as long as it runs (``owner``, ``lease_expires_at``, renewed with its tests' leases)
and may keep at most its share of calls in flight, whatever number of tests it has leased ahead. A lane that hands
over reserves its row for its successor (``owner`` set to the successor's token). A lane whose worker died is
taken over once its lease expires, as its tests are. See docs/execution.md.

A tenant table like the others: FORCE row-level security with the sealed tenant policy of revision 0002. The
sweeper's mirror is unchanged: it looks at runs and test leases, not at lanes.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SEALED_ORG = "(select tenant_guard.current_organization())"


def upgrade() -> None:
    op.create_table(
        "test_run_lane",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("test_run_id", sa.Uuid(), nullable=False),
        sa.Column("lane", sa.Integer(), nullable=False),
        sa.Column("share", sa.Integer(), nullable=False),
        sa.Column("owner", sa.Text(), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("test_run_id", "lane", name="pk_test_run_lane"),
        sa.ForeignKeyConstraint(["organization_id"], ["organization.id"], ondelete="CASCADE",
                                name="fk_test_run_lane_organization_id_organization"),
        sa.ForeignKeyConstraint(["organization_id", "test_run_id"], ["test_run.organization_id", "test_run.id"],
                                name="fk_test_run_lane_test_run_same_org", ondelete="CASCADE"),
        sa.CheckConstraint("lane >= 0", name="ck_test_run_lane_lane"),
        sa.CheckConstraint("share >= 1", name="ck_test_run_lane_share"),
    )
    op.execute("ALTER TABLE test_run_lane ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE test_run_lane FORCE ROW LEVEL SECURITY")
    op.execute("CREATE POLICY tenant_isolation ON test_run_lane FOR ALL "
               f"USING (organization_id = {SEALED_ORG}) WITH CHECK (organization_id = {SEALED_ORG})")


def downgrade() -> None:
    op.drop_table("test_run_lane")
