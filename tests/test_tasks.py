"""The product tasks in a running worker: results, cross-tenant lookups, fail-closed, routing."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import pytest
from sqlalchemy import create_engine

from worker.db.models import Endpoint, Organization, TestConfiguration, TestSet
from worker.db.session import tenant_session
from worker.launcher import task_launcher
from worker.routing import queue_for

TIMEOUT = 60


@pytest.fixture(scope="module")
def two_tenants(migrated_database):  # type: ignore[no-untyped-def]
    """Two organizations, each with one test configuration."""
    engine = create_engine(migrated_database.owner_url)
    made = {}
    for label in ("a", "b"):
        org = uuid.uuid4()
        with tenant_session(org, None, engine=engine) as db:
            db.add(Organization(id=org, name=f"tasks-{label}"))
            db.flush()
            test_set = TestSet(organization_id=org, name="set")
            endpoint = Endpoint(organization_id=org, name="target", url="http://127.0.0.1:9/never")
            db.add_all([test_set, endpoint])
            db.flush()
            config = TestConfiguration(organization_id=org, test_set_id=test_set.id, endpoint_id=endpoint.id)
            db.add(config)
            db.flush()
            made[label] = (str(org), str(config.id))
    engine.dispose()
    return made


@pytest.fixture(scope="module")
def worker(worker_factory):  # type: ignore[no-untyped-def]
    return worker_factory(pool="prefork", concurrency=2)


def test_get_test_configuration_sees_only_its_tenant(worker, client_app, two_tenants) -> None:
    task = client_app.tasks["rhesis.backend.tasks.get_test_configuration"]
    (org_a, config_a), (org_b, config_b) = two_tenants["a"], two_tenants["b"]
    assert task.apply_async([config_a], headers={"organization_id": org_a}).get(TIMEOUT) == {
        "found": True, "id": config_a}
    assert task.apply_async([config_b], headers={"organization_id": org_a}).get(TIMEOUT) == {
        "found": False, "id": config_b}
    assert task.apply_async([config_b], headers={"organization_id": org_b}).get(TIMEOUT)["found"] is True


def test_task_launcher_uses_the_current_user(worker, client_app, two_tenants) -> None:
    org, _ = two_tenants["a"]
    user = SimpleNamespace(id=uuid.uuid4(), organization_id=uuid.UUID(org))
    result = task_launcher(client_app.tasks["rhesis.backend.tasks.count_test_sets"], current_user=user)
    assert result.get(TIMEOUT) == {"count": 1, "organization_id": org, "user_id": str(user.id)}


@pytest.mark.parametrize("name", ["rhesis.backend.tasks.count_test_sets", "rhesis.backend.tasks.manual_db_example"])
def test_tenant_tasks_fail_closed_without_organization(worker, client_app, name: str) -> None:
    result = client_app.tasks[name].apply_async()
    with pytest.raises(Exception, match="needs an organization_id") as excinfo:
        result.get(TIMEOUT)
    assert type(excinfo.value).__name__ == "TenantContextError"
    assert result.state == "FAILURE"
    assert (result.retries or 0) == 0


def test_invalid_configuration_id_is_not_retried(worker, client_app, two_tenants) -> None:
    org, _ = two_tenants["a"]
    result = client_app.tasks["rhesis.backend.tasks.get_test_configuration"].apply_async(
        ["nope"], headers={"organization_id": org})
    with pytest.raises(Exception, match="test_configuration_id 'nope' is not a valid UUID") as excinfo:
        result.get(TIMEOUT)
    assert type(excinfo.value).__name__ == "InvalidIdentifierError"  # not a tenant problem: the name says so
    assert (result.retries or 0) == 0


def test_routing(client_app) -> None:
    assert queue_for("rhesis.backend.tasks.execute_test_configuration") == "execution"
    assert queue_for("rhesis.backend.tasks.execution.run_single_test") == "execution"
    assert queue_for("rhesis.backend.tasks.echo") == "celery"
    router = client_app.amqp.router
    route = router.route({}, "rhesis.backend.tasks.execute_test_configuration")
    assert route["queue"].name == "execution"
    assert router.route({}, "rhesis.backend.tasks.count_test_sets")["queue"].name == "celery"


def test_registered_task_names(client_app) -> None:
    names = set(client_app.tasks.keys())
    for name in ("echo", "count_test_sets", "get_test_configuration", "manual_db_example", "create_test_set"):
        assert f"rhesis.backend.tasks.{name}" in names


def test_malformed_message_is_rejected_and_worker_keeps_consuming(worker, client_app) -> None:
    """A message that cannot be decoded is logged and dropped; the next good one still runs."""
    with client_app.connection_for_write() as connection:
        producer = connection.Producer()
        producer.publish("{not json", routing_key="celery", exchange="", content_type="application/json",
                         content_encoding="utf-8", headers={"task": "rhesis.backend.tasks.echo", "id": "bad-1"})
        producer.publish(b"\x80\x04pickled", routing_key="celery", exchange="",
                         content_type="application/x-python-serialize", content_encoding="binary",
                         headers={"task": "rhesis.backend.tasks.echo", "id": "bad-2"})
    result = client_app.tasks["rhesis.backend.tasks.echo"].apply_async(["after"])
    assert result.get(TIMEOUT) == "Message: after, Organization: unknown, User: unknown"
    log = worker.log()
    # The message guard (docs/reliability.md) logs each one with its reason and the payload that carried it.
    rejected = [line for line in log.splitlines() if "discarded malformed message" in line]
    assert any("bad-1" in line for line in rejected), log
    assert any("bad-2" in line and "pickle" in line for line in rejected), log
    assert worker.proc.poll() is None


def test_retry_policy_comes_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.app import create_app
    from worker.settings import get_settings

    # BaseTask reads the process's settings (worker.settings.get_settings), never app.conf.
    monkeypatch.setenv("ENV_FILE", "/nonexistent")
    monkeypatch.setenv("TASK_MAX_RETRIES", "5")
    monkeypatch.setenv("TASK_RETRY_BACKOFF_MAX", "120")
    get_settings.cache_clear()
    try:
        app = create_app(main="retry-policy")
        task = app.tasks["rhesis.backend.tasks.count_test_sets"]
        assert (task.max_retries, task.retry_backoff_max, task.retry_backoff, task.retry_jitter) == (5, 120, True, True)
        assert task.track_started is True
        assert "worker_task_max_retries" not in app.conf and "worker_task_retry_backoff_max" not in app.conf
    finally:
        get_settings.cache_clear()
