"""SQLAlchemy 2 models of the tenant schema.

Every tenant table carries ``organization_id``; references between tenant tables are composite foreign keys
``(organization_id, x_id) -> x(organization_id, id)``, so that a row can never point at another organization's
row, even when written by a role that bypasses row-level security. The migrations in ``migrations/versions``
create the same schema (a test compares them) plus the row-level security policies.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, declared_attr, mapped_column, relationship

from worker.execution.spec import (
    AUTH_KINDS,
    HTTP_METHODS,
    JUDGE_PROVIDERS,
    METRIC_KINDS,
    RESPONSE_FORMATS,
    SCORE_TYPES,
    THRESHOLD_OPERATORS,
)

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

TEST_RUN_STATUSES = ("queued", "running", "completed", "partial", "failed", "cancelled")
#: A run the sweeper looks after (``tenant_guard.execution_stalled_runs``).
ACTIVE_RUN_STATUSES = ("queued", "running")
TEST_RESULT_STATUSES = ("pass", "fail", "error", "not_scored", "cancelled")
TEST_RUN_ITEM_STATES = ("pending", "running", "done")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} in ('" + "', '".join(values) + "')"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    # The model names start with "Test"; without this pytest tries to collect them from test modules.
    __test__ = False


def _uuid_pk() -> Mapped[uuid.UUID]:
    # Python-side default so that ids exist before a flush; the server default covers raw SQL inserts.
    return mapped_column(primary_key=True, default=uuid.uuid4, server_default=text("gen_random_uuid()"),
                         sort_order=-10)


def _created_at() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


def _tenant_fk(owner: str, table: str, column: str, ondelete: str | None = None) -> ForeignKeyConstraint:
    """``(organization_id, <column>) -> <table>(organization_id, id)``: no reference across organizations."""
    return ForeignKeyConstraint(
        ["organization_id", column], [f"{table}.organization_id", f"{table}.id"],
        name=f"fk_{owner}_{column.removesuffix('_id')}_same_org", ondelete=ondelete,
    )


def _org_and_id_unique() -> UniqueConstraint:
    # Target of the composite foreign keys above.
    return UniqueConstraint("organization_id", "id")


class TenantMixin:
    """A row that belongs to one organization; row-level security and the ORM criteria filter on it."""

    __test__ = False

    @declared_attr
    def organization_id(cls) -> Mapped[uuid.UUID]:
        # sort_order: right after the primary key in CREATE TABLE, not after the subclass columns.
        return mapped_column(ForeignKey("organization.id", ondelete="CASCADE"), nullable=False, sort_order=-5)


class Organization(Base):
    """A tenant. Row-level security shows a session only its own organization row."""

    __tablename__ = "organization"

    id: Mapped[uuid.UUID] = _uuid_pk()
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    created_at: Mapped[datetime] = _created_at()


class User(TenantMixin, Base):
    __tablename__ = "user"
    __table_args__ = (_org_and_id_unique(), UniqueConstraint("organization_id", "email"))

    id: Mapped[uuid.UUID] = _uuid_pk()
    email: Mapped[str] = mapped_column(String(320), nullable=False)
    name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = _created_at()


class TestSet(TenantMixin, Base):
    __tablename__ = "test_set"
    __table_args__ = (_org_and_id_unique(), _tenant_fk("test_set", "user", "user_id"))

    id: Mapped[uuid.UUID] = _uuid_pk()
    user_id: Mapped[uuid.UUID | None] = mapped_column()
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created_at()

    tests: Mapped[list[Test]] = relationship(
        back_populates="test_set", primaryjoin="TestSet.id == foreign(Test.test_set_id)",
        passive_deletes=True, order_by="Test.created_at",
    )


class Test(TenantMixin, Base):
    """A prompt sent to an endpoint and what the answer is expected to satisfy."""

    __tablename__ = "test"
    __table_args__ = (
        _org_and_id_unique(),
        _tenant_fk("test", "test_set", "test_set_id", ondelete="CASCADE"),
        _tenant_fk("test", "user", "user_id"),
    )

    id: Mapped[uuid.UUID] = _uuid_pk()
    user_id: Mapped[uuid.UUID | None] = mapped_column()
    test_set_id: Mapped[uuid.UUID] = mapped_column(nullable=False, index=True)
    prompt: Mapped[str] = mapped_column(Text, nullable=False)
    expected_response: Mapped[str | None] = mapped_column(Text)
    # A list of checks, e.g. [{"type": "contains", "value": "refund"}].
    expectations: Mapped[list[Any]] = mapped_column(JSONB, nullable=False, server_default=text("'[]'::jsonb"),
                                                    default=list)
    created_at: Mapped[datetime] = _created_at()

    test_set: Mapped[TestSet] = relationship(
        back_populates="tests", primaryjoin="foreign(Test.test_set_id) == TestSet.id")


class Endpoint(TenantMixin, Base):
    """The HTTP target a test configuration calls."""

    __tablename__ = "endpoint"
    __table_args__ = (
        _org_and_id_unique(),
        _tenant_fk("endpoint", "user", "user_id"),
        CheckConstraint("timeout_seconds > 0", name="timeout_positive"),
        CheckConstraint(_in("method", HTTP_METHODS), name="method"),
        CheckConstraint(_in("response_format", RESPONSE_FORMATS), name="response_format"),
        CheckConstraint(_in("auth_type", AUTH_KINDS), name="auth_type"),
        CheckConstraint("max_concurrency > 0", name="max_concurrency_positive"),
    )

    id: Mapped[uuid.UUID] = _uuid_pk()
    user_id: Mapped[uuid.UUID | None] = mapped_column()
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    url: Mapped[str] = mapped_column(Text, nullable=False)
    method: Mapped[str] = mapped_column(String(10), nullable=False, server_default="POST", default="POST")
    headers: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, server_default=text("'{}'::jsonb"),
                                                    default=dict)
    timeout_seconds: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("30"), default=30)
    created_at: Mapped[datetime] = _created_at()
    query_params: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, server_default=text("'{}'::jsonb"),
                                                         default=dict)
    request_mapping: Mapped[Any] = mapped_column(JSONB, nullable=True)
    request_body_template: Mapped[str | None] = mapped_column(Text)
    response_format: Mapped[str] = mapped_column(String(10), nullable=False, server_default="json", default="json")
    response_mapping: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False,
                                                             server_default=text("'{}'::jsonb"), default=dict)
    auth_type: Mapped[str] = mapped_column(String(40), nullable=False, server_default="none", default="none")
    auth_header_name: Mapped[str | None] = mapped_column(Text)
    # Fernet tokens (worker.db.secrets); never the plain secret.
    auth_token_encrypted: Mapped[str | None] = mapped_column(Text)
    oauth_token_url: Mapped[str | None] = mapped_column(Text)
    oauth_client_id: Mapped[str | None] = mapped_column(Text)
    oauth_client_secret_encrypted: Mapped[str | None] = mapped_column(Text)
    oauth_scopes: Mapped[list[Any]] = mapped_column(JSONB, nullable=False, server_default=text("'[]'::jsonb"),
                                                    default=list)
    oauth_audience: Mapped[str | None] = mapped_column(Text)
    #: Calls in flight to this endpoint across all runs; NULL means no endpoint-wide limit.
    max_concurrency: Mapped[int | None] = mapped_column(Integer)


class TestConfiguration(TenantMixin, Base):
    """A test set run against an endpoint."""

    __tablename__ = "test_configuration"
    __table_args__ = (
        _org_and_id_unique(),
        _tenant_fk("test_configuration", "test_set", "test_set_id"),
        _tenant_fk("test_configuration", "endpoint", "endpoint_id"),
        _tenant_fk("test_configuration", "user", "user_id"),
        CheckConstraint("max_concurrency between 1 and 1000", name="max_concurrency_range"),
    )

    id: Mapped[uuid.UUID] = _uuid_pk()
    user_id: Mapped[uuid.UUID | None] = mapped_column()
    test_set_id: Mapped[uuid.UUID] = mapped_column(nullable=False, index=True)
    endpoint_id: Mapped[uuid.UUID] = mapped_column(nullable=False, index=True)
    name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = _created_at()
    #: Endpoint calls of one run in flight at once; NULL means EXECUTION_RUN_CONCURRENCY.
    max_concurrency: Mapped[int | None] = mapped_column(Integer)

    test_set: Mapped[TestSet] = relationship(primaryjoin="foreign(TestConfiguration.test_set_id) == TestSet.id")
    endpoint: Mapped[Endpoint] = relationship(primaryjoin="foreign(TestConfiguration.endpoint_id) == Endpoint.id")


class TestRun(TenantMixin, Base):
    __tablename__ = "test_run"
    __table_args__ = (
        _org_and_id_unique(),
        _tenant_fk("test_run", "test_configuration", "test_configuration_id", ondelete="CASCADE"),
        _tenant_fk("test_run", "user", "user_id"),
        CheckConstraint(_in("status", TEST_RUN_STATUSES), name="status"),
        # A redelivered execute message finds the run its first delivery created.
        Index("ix_test_run_organization_id_task_id", "organization_id", "task_id", unique=True,
              postgresql_where=text("task_id IS NOT NULL")),
    )

    id: Mapped[uuid.UUID] = _uuid_pk()
    user_id: Mapped[uuid.UUID | None] = mapped_column()
    test_configuration_id: Mapped[uuid.UUID] = mapped_column(nullable=False, index=True)
    status: Mapped[str] = mapped_column(String(20), nullable=False, server_default="queued", default="queued")
    task_id: Mapped[str | None] = mapped_column(String(255))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _created_at()
    total_tests: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"), default=0)
    #: Results per status, e.g. {"pass": 3, "fail": 1}.
    counts: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, server_default=text("'{}'::jsonb"),
                                                   default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The sweeper treats a queued or running run whose updated_at is older than its grace as stalled.
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now(),
                                                 onupdate=func.now())

    test_configuration: Mapped[TestConfiguration] = relationship(
        primaryjoin="foreign(TestRun.test_configuration_id) == TestConfiguration.id")
    results: Mapped[list[TestResult]] = relationship(
        back_populates="test_run", primaryjoin="TestRun.id == foreign(TestResult.test_run_id)", passive_deletes=True)


class TestResult(TenantMixin, Base):
    __tablename__ = "test_result"
    __table_args__ = (
        _org_and_id_unique(),
        _tenant_fk("test_result", "test_run", "test_run_id", ondelete="CASCADE"),
        # No cascade: deleting a test must not silently erase the history of runs that used it.
        _tenant_fk("test_result", "test", "test_id"),
        CheckConstraint(_in("status", TEST_RESULT_STATUSES), name="status"),
        # One result per test and run: a test redone after a lost lease overwrites, never duplicates.
        UniqueConstraint("test_run_id", "test_id"),
    )

    id: Mapped[uuid.UUID] = _uuid_pk()
    test_run_id: Mapped[uuid.UUID] = mapped_column(nullable=False, index=True)
    test_id: Mapped[uuid.UUID] = mapped_column(nullable=False, index=True)
    status: Mapped[str] = mapped_column(String(20), nullable=False)
    output: Mapped[str | None] = mapped_column(Text)
    score: Mapped[float | None] = mapped_column()
    details: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, server_default=text("'{}'::jsonb"),
                                                    default=dict)
    created_at: Mapped[datetime] = _created_at()
    #: One of worker.execution.spec.ERROR_TYPES when the endpoint gave no answer.
    error_type: Mapped[str | None] = mapped_column(String(40))
    reason: Mapped[str | None] = mapped_column(Text)
    http_status: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[float | None] = mapped_column(Double)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"), default=0)
    #: ``MetricOutcome.as_json()`` of every metric evaluated.
    metrics: Mapped[list[Any]] = mapped_column(JSONB, nullable=False, server_default=text("'[]'::jsonb"),
                                               default=list)

    test_run: Mapped[TestRun] = relationship(
        back_populates="results", primaryjoin="foreign(TestResult.test_run_id) == TestRun.id")
    test: Mapped[Test] = relationship(primaryjoin="foreign(TestResult.test_id) == Test.id")


class TestRunItem(TenantMixin, Base):
    """The durable state of one test in a run: which worker holds it (a lease) and whether it is done."""

    __tablename__ = "test_run_item"
    __table_args__ = (
        PrimaryKeyConstraint("test_run_id", "test_id"),
        _tenant_fk("test_run_item", "test_run", "test_run_id", ondelete="CASCADE"),
        # No cascade, like test_result: a test used by a run stays until the run is deleted.
        _tenant_fk("test_run_item", "test", "test_id"),
        CheckConstraint(_in("state", TEST_RUN_ITEM_STATES), name="state"),
        Index("ix_test_run_item_test_run_id_state", "test_run_id", "state"),
        # The sweeper and lanes look for expired leases among running items only.
        Index("ix_test_run_item_lease_expires_at", "lease_expires_at", postgresql_where=text("state = 'running'")),
    )

    test_run_id: Mapped[uuid.UUID] = mapped_column(nullable=False)
    test_id: Mapped[uuid.UUID] = mapped_column(nullable=False)
    state: Mapped[str] = mapped_column(String(10), nullable=False, server_default="pending", default="pending")
    lease_owner: Mapped[str | None] = mapped_column(Text)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    claims: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"), default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now(),
                                                 onupdate=func.now())


class TestRunLane(TenantMixin, Base):
    """One lane of a run: a fixed share of the run's concurrency cap, leased by the lane task running it
    (revision 0006, docs/execution.md)."""

    __tablename__ = "test_run_lane"
    __table_args__ = (
        PrimaryKeyConstraint("test_run_id", "lane"),
        _tenant_fk("test_run_lane", "test_run", "test_run_id", ondelete="CASCADE"),
        CheckConstraint("lane >= 0", name="lane"),
        CheckConstraint("share >= 1", name="share"),
    )

    test_run_id: Mapped[uuid.UUID] = mapped_column(nullable=False)
    lane: Mapped[int] = mapped_column(Integer, nullable=False)
    share: Mapped[int] = mapped_column(Integer, nullable=False)
    owner: Mapped[str | None] = mapped_column(Text)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now(),
                                                 onupdate=func.now())


class Metric(TenantMixin, Base):
    """How an answer is judged: a deterministic check (``parameters``) or an LLM judge (prompt, steps, scale)."""

    __tablename__ = "metric"
    __table_args__ = (
        _org_and_id_unique(),
        _tenant_fk("metric", "user", "user_id"),
        CheckConstraint(_in("kind", METRIC_KINDS), name="kind"),
        CheckConstraint(_in("threshold_operator", THRESHOLD_OPERATORS), name="threshold_operator"),
        CheckConstraint(_in("score_type", SCORE_TYPES), name="score_type"),
        CheckConstraint(_in("judge_provider", JUDGE_PROVIDERS), name="judge_provider"),
    )

    id: Mapped[uuid.UUID] = _uuid_pk()
    user_id: Mapped[uuid.UUID | None] = mapped_column()
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    kind: Mapped[str] = mapped_column(String(40), nullable=False)
    parameters: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, server_default=text("'{}'::jsonb"),
                                                       default=dict)
    threshold: Mapped[float | None] = mapped_column(Double)
    threshold_operator: Mapped[str | None] = mapped_column(String(2))
    evaluation_prompt: Mapped[str | None] = mapped_column(Text)
    evaluation_steps: Mapped[list[Any]] = mapped_column(JSONB, nullable=False, server_default=text("'[]'::jsonb"),
                                                        default=list)
    score_type: Mapped[str] = mapped_column(String(20), nullable=False, server_default="binary", default="binary")
    min_score: Mapped[float | None] = mapped_column(Double)
    max_score: Mapped[float | None] = mapped_column(Double)
    categories: Mapped[list[Any]] = mapped_column(JSONB, nullable=False, server_default=text("'[]'::jsonb"),
                                                  default=list)
    passing_categories: Mapped[list[Any]] = mapped_column(JSONB, nullable=False, server_default=text("'[]'::jsonb"),
                                                          default=list)
    judge_provider: Mapped[str | None] = mapped_column(String(20))
    judge_model: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = _created_at()


class TestSetMetric(TenantMixin, Base):
    """A metric applied to every test of a test set."""

    __tablename__ = "test_set_metric"
    __table_args__ = (
        PrimaryKeyConstraint("test_set_id", "metric_id"),
        _tenant_fk("test_set_metric", "test_set", "test_set_id", ondelete="CASCADE"),
        _tenant_fk("test_set_metric", "metric", "metric_id", ondelete="CASCADE"),
    )

    test_set_id: Mapped[uuid.UUID] = mapped_column(nullable=False)
    metric_id: Mapped[uuid.UUID] = mapped_column(nullable=False, index=True)


class TestConfigurationMetric(TenantMixin, Base):
    """A metric added by one configuration on top of its test set's."""

    __tablename__ = "test_configuration_metric"
    __table_args__ = (
        PrimaryKeyConstraint("test_configuration_id", "metric_id"),
        _tenant_fk("test_configuration_metric", "test_configuration", "test_configuration_id", ondelete="CASCADE"),
        _tenant_fk("test_configuration_metric", "metric", "metric_id", ondelete="CASCADE"),
    )

    test_configuration_id: Mapped[uuid.UUID] = mapped_column(nullable=False)
    metric_id: Mapped[uuid.UUID] = mapped_column(nullable=False, index=True)


class TaskEffect(TenantMixin, Base):
    """The marker of a task whose database effect was applied (``worker.db.once``): one row per task id and
    organization, written in the same transaction as the effect, so both commit or neither does."""

    __tablename__ = "task_effect"
    __table_args__ = (PrimaryKeyConstraint("organization_id", "task_id"),)

    task_id: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = _created_at()

#: Tables whose rows belong to one organization (row-level security on ``organization_id``), in creation order.
_TENANT_TABLE_NAMES = {mapper.local_table.name for mapper in Base.registry.mappers
                       if issubclass(mapper.class_, TenantMixin)}
TENANT_TABLES: tuple[str, ...] = tuple(t.name for t in Base.metadata.sorted_tables if t.name in _TENANT_TABLE_NAMES)
#: Every table under row-level security: the tenant tables plus ``organization`` (policy on ``id``).
RLS_TABLES: tuple[str, ...] = ("organization", *TENANT_TABLES)
