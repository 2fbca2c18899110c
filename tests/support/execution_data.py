"""Organizations, endpoints, test sets and configurations for execution tests, written as the owner role."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import create_engine, func, select, text
from sqlalchemy.pool import NullPool

from worker.db.models import (
    Endpoint,
    Metric,
    Organization,
    Test,
    TestConfiguration,
    TestConfigurationMetric,
    TestResult,
    TestRun,
    TestSet,
    User,
)
from worker.db.session import tenant_session

ECHO_MAPPING = {"input": "{{ input }}", "test_id": "{{ test_id }}"}


@dataclass(frozen=True)
class Configuration:
    organization_id: str
    user_id: str
    configuration_id: str
    test_ids: tuple[str, ...]
    endpoint_id: str = ""


class ExecutionData:
    def __init__(self, owner_url: str) -> None:
        self.engine = create_engine(owner_url, poolclass=NullPool)
        self.organizations: list[uuid.UUID] = []

    def close(self) -> None:
        for org in self.organizations:
            with tenant_session(org, engine=self.engine) as db:
                db.execute(Organization.__table__.delete())
        self.engine.dispose()

    def organization(self, name: str = "execution") -> tuple[str, str]:
        org, user = uuid.uuid4(), uuid.uuid4()
        with tenant_session(org, engine=self.engine) as db:
            db.add(Organization(id=org, name=name))
            db.flush()
            db.add(User(id=user, organization_id=org, email=f"{user.hex[:8]}@example.test"))
        self.organizations.append(org)
        return str(org), str(user)

    def configuration(self, endpoint_url: str, tests: int, *, org: tuple[str, str] | None = None,
                      metrics: tuple[dict[str, Any], ...] = (), max_concurrency: int | None = None,
                      expectations: list[dict[str, Any]] | None = None, endpoint_id: str | None = None,
                      endpoint_max_concurrency: int | None = None, **endpoint: Any) -> Configuration:
        """A test set of ``tests`` tests and a configuration; the endpoint is new, or ``endpoint_id`` (shared)."""
        organization_id, user_id = org or self.organization()
        with tenant_session(organization_id, engine=self.engine) as db:
            if endpoint_id is None:
                endpoint_row = Endpoint(organization_id=organization_id, user_id=user_id, name="under test",
                                        url=endpoint_url, method="POST", request_mapping=ECHO_MAPPING,
                                        response_mapping={"output": "$.output"},
                                        max_concurrency=endpoint_max_concurrency, **endpoint)
            else:
                endpoint_row = db.get(Endpoint, uuid.UUID(endpoint_id))
            test_set = TestSet(organization_id=organization_id, user_id=user_id, name=f"{tests} tests")
            db.add_all([endpoint_row, test_set])
            db.flush()
            rows = [Test(organization_id=organization_id, test_set_id=test_set.id, prompt=f"question {n}",
                         expected_response=f"answer {n}", expectations=expectations or [])
                    for n in range(tests)]
            db.add_all(rows)
            configuration = TestConfiguration(organization_id=organization_id, user_id=user_id,
                                              test_set_id=test_set.id, endpoint_id=endpoint_row.id,
                                              max_concurrency=max_concurrency)
            db.add(configuration)
            db.flush()
            for spec in metrics:
                metric = Metric(organization_id=organization_id, **spec)
                db.add(metric)
                db.flush()
                db.add(TestConfigurationMetric(organization_id=organization_id,
                                               test_configuration_id=configuration.id, metric_id=metric.id))
            return Configuration(organization_id, user_id, str(configuration.id), tuple(str(t.id) for t in rows),
                                 str(endpoint_row.id))

    def run(self, organization_id: str, run_id: str) -> TestRun | None:
        with tenant_session(organization_id, engine=self.engine) as db:
            return db.get(TestRun, uuid.UUID(run_id))

    def pre_created_run(self, configuration: Configuration, task_id: str) -> str:
        """A queued run carrying ``task_id``, as the API's execute route writes it before publishing."""
        run_id = uuid.uuid4()
        with tenant_session(configuration.organization_id, engine=self.engine) as db:
            db.add(TestRun(id=run_id, organization_id=uuid.UUID(configuration.organization_id),
                           test_configuration_id=uuid.UUID(configuration.configuration_id), status="queued",
                           task_id=task_id))
        return str(run_id)

    def runs(self, organization_id: str) -> list[TestRun]:
        with tenant_session(organization_id, engine=self.engine) as db:
            return list(db.scalars(select(TestRun)))

    def run_count(self, organization_id: str) -> int:
        with tenant_session(organization_id, engine=self.engine) as db:
            return db.scalar(select(func.count()).select_from(TestRun)) or 0

    def results(self, organization_id: str, run_id: str) -> list[TestResult]:
        with tenant_session(organization_id, engine=self.engine) as db:
            return list(db.scalars(select(TestResult).where(TestResult.test_run_id == uuid.UUID(run_id))))

    def result_count(self, organization_id: str, run_id: str) -> int:
        with tenant_session(organization_id, engine=self.engine) as db:
            return db.scalar(select(func.count()).select_from(TestResult)
                             .where(TestResult.test_run_id == uuid.UUID(run_id))) or 0

    def item_states(self, organization_id: str, run_id: str) -> dict[str, int]:
        with tenant_session(organization_id, engine=self.engine) as db:
            rows = db.execute(text("SELECT state, count(*) FROM test_run_item WHERE test_run_id = :r GROUP BY state"),
                              {"r": run_id}).all()
        return {state: n for state, n in rows}
