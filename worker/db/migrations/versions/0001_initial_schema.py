"""Initial schema: organizations, users, test sets, tests, endpoints, configurations, runs, results; RLS.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

The RLS statements are written out here rather than imported, so that this revision keeps meaning what it
meant when it was applied.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# nullif: a transaction-local setting reads '' after its transaction ended on that connection, NULL on a fresh
# one; both must match nothing (a bare ''::uuid would even raise).
CURRENT_ORG = "nullif(current_setting('app.current_organization', true), '')::uuid"


def _enable_rls(table: str, column: str = "organization_id") -> None:
    quoted = f'"{table}"'
    op.execute(f"ALTER TABLE {quoted} ENABLE ROW LEVEL SECURITY")
    # FORCE: the owner (the migration role) is filtered too, so demo data and fixtures cannot cross tenants.
    op.execute(f"ALTER TABLE {quoted} FORCE ROW LEVEL SECURITY")
    op.execute(f"CREATE POLICY tenant_isolation ON {quoted} FOR ALL "
               f"USING ({column} = {CURRENT_ORG}) WITH CHECK ({column} = {CURRENT_ORG})")


def _id() -> sa.Column:
    return sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False)


def _org() -> sa.Column:
    return sa.Column("organization_id", sa.Uuid(), nullable=False)


def _user() -> sa.Column:
    return sa.Column("user_id", sa.Uuid(), nullable=True)


def _created_at() -> sa.Column:
    return sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False)


def _tenant_constraints(table: str) -> list[sa.Constraint]:
    return [
        sa.PrimaryKeyConstraint("id", name=f"pk_{table}"),
        sa.UniqueConstraint("organization_id", "id", name=f"uq_{table}_organization_id_id"),
        sa.ForeignKeyConstraint(["organization_id"], ["organization.id"], ondelete="CASCADE",
                                name=f"fk_{table}_organization_id_organization"),
    ]


def _same_org(owner: str, table: str, column: str, ondelete: str | None = None) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(["organization_id", column], [f"{table}.organization_id", f"{table}.id"],
                                   name=f"fk_{owner}_{column.removesuffix('_id')}_same_org", ondelete=ondelete)


def upgrade() -> None:
    op.create_table(
        "organization",
        _id(),
        sa.Column("name", sa.String(200), nullable=False),
        _created_at(),
        sa.PrimaryKeyConstraint("id", name="pk_organization"),
    )
    op.create_table(
        "user",
        _id(), _org(),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("name", sa.String(200), nullable=True),
        _created_at(),
        *_tenant_constraints("user"),
        sa.UniqueConstraint("organization_id", "email", name="uq_user_organization_id_email"),
    )
    op.create_table(
        "endpoint",
        _id(), _org(), _user(),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("method", sa.String(10), server_default="POST", nullable=False),
        sa.Column("headers", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False),
        sa.Column("timeout_seconds", sa.Integer(), server_default=sa.text("30"), nullable=False),
        _created_at(),
        *_tenant_constraints("endpoint"),
        _same_org("endpoint", "user", "user_id"),
        sa.CheckConstraint("timeout_seconds > 0", name="ck_endpoint_timeout_positive"),
    )
    op.create_table(
        "test_set",
        _id(), _org(), _user(),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        _created_at(),
        *_tenant_constraints("test_set"),
        _same_org("test_set", "user", "user_id"),
    )
    op.create_table(
        "test",
        _id(), _org(), _user(),
        sa.Column("test_set_id", sa.Uuid(), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("expected_response", sa.Text(), nullable=True),
        sa.Column("expectations", postgresql.JSONB(), server_default=sa.text("'[]'::jsonb"), nullable=False),
        _created_at(),
        *_tenant_constraints("test"),
        _same_org("test", "test_set", "test_set_id", ondelete="CASCADE"),
        _same_org("test", "user", "user_id"),
    )
    op.create_index("ix_test_test_set_id", "test", ["test_set_id"])
    op.create_table(
        "test_configuration",
        _id(), _org(), _user(),
        sa.Column("test_set_id", sa.Uuid(), nullable=False),
        sa.Column("endpoint_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(200), nullable=True),
        _created_at(),
        *_tenant_constraints("test_configuration"),
        _same_org("test_configuration", "test_set", "test_set_id"),
        _same_org("test_configuration", "endpoint", "endpoint_id"),
        _same_org("test_configuration", "user", "user_id"),
    )
    op.create_index("ix_test_configuration_test_set_id", "test_configuration", ["test_set_id"])
    op.create_index("ix_test_configuration_endpoint_id", "test_configuration", ["endpoint_id"])
    op.create_table(
        "test_run",
        _id(), _org(), _user(),
        sa.Column("test_configuration_id", sa.Uuid(), nullable=False),
        sa.Column("status", sa.String(20), server_default="pending", nullable=False),
        sa.Column("task_id", sa.String(255), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        _created_at(),
        *_tenant_constraints("test_run"),
        _same_org("test_run", "test_configuration", "test_configuration_id", ondelete="CASCADE"),
        _same_org("test_run", "user", "user_id"),
        sa.CheckConstraint("status in ('pending', 'running', 'completed', 'failed', 'cancelled')",
                           name="ck_test_run_status"),
    )
    op.create_index("ix_test_run_test_configuration_id", "test_run", ["test_configuration_id"])
    op.create_table(
        "test_result",
        _id(), _org(),
        sa.Column("test_run_id", sa.Uuid(), nullable=False),
        sa.Column("test_id", sa.Uuid(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("response", sa.Text(), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("details", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False),
        _created_at(),
        *_tenant_constraints("test_result"),
        _same_org("test_result", "test_run", "test_run_id", ondelete="CASCADE"),
        _same_org("test_result", "test", "test_id"),
        sa.CheckConstraint("status in ('passed', 'failed', 'error', 'skipped')", name="ck_test_result_status"),
    )
    op.create_index("ix_test_result_test_run_id", "test_result", ["test_run_id"])
    op.create_index("ix_test_result_test_id", "test_result", ["test_id"])

    _enable_rls("organization", column="id")
    for table in ("user", "endpoint", "test_set", "test", "test_configuration", "test_run", "test_result"):
        _enable_rls(table)


def downgrade() -> None:
    for table in ("test_result", "test_run", "test_configuration", "test", "test_set", "endpoint", "user",
                  "organization"):
        op.drop_table(table)
