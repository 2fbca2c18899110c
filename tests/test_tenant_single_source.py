"""A task's tenant comes from the message's top-level headers only, on every attempt (running prefork worker).

Every other place a message can name a tenant (a nested ``headers`` dict, the body's embedded options, kwargs)
either agrees or fails the task before it runs, without a retry; a chord body runs as the tenant fixed when the
chord was published, never as the header task that finished last.
"""

from __future__ import annotations

import pytest
from celery import chord

from worker.tenant.context import tenant_scope

ORG = "0b7d4f6e-1c2a-4e58-9a41-6c3f2e1d0a01"
USER = "5a2e9c1b-7d4f-4b3e-8c6a-1f0e9d8c7b02"
OTHER_ORG = "9e8d7c6b-5a49-4838-a726-150493827163"
OTHER_USER = "1f0e9d8c-7b02-4a41-8c6a-5a2e9c1b7d4f"
TIMEOUT = 60


@pytest.fixture(scope="module")
def worker(worker_factory):  # type: ignore[no-untyped-def]
    return worker_factory(pool="prefork", concurrency=2)


def probe(client_app, name: str):  # type: ignore[no-untyped-def]
    return client_app.tasks[f"tests.probe.{name}"]


def assert_refused(result, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(Exception, match=match) as excinfo:
        result.get(TIMEOUT)
    assert type(excinfo.value).__name__ == "TenantConflictError", excinfo.value
    assert (result.retries or 0) == 0


def publish_raw(client_app, name: str, headers: dict, embed_extra: dict) -> str:  # type: ignore[no-untyped-def]
    """Publish like Celery does plus keys in the body's embedded options, past our publish-time checks."""
    import uuid

    task_id = str(uuid.uuid4())
    message = client_app.amqp.as_task_v2(task_id, name, (), {})
    message.headers.update(headers)
    message.body[2].update(embed_extra)
    with client_app.producer_or_acquire() as producer:
        producer.publish(message.body, exchange="", routing_key="celery", headers=message.headers,
                         serializer="json", **message.properties)
    return task_id


def dead_lettered(session_env: dict, task_id: str) -> bool:
    import redis

    client = redis.Redis.from_url(session_env["BROKER_URL"])
    try:
        return any(task_id in entry.decode(errors="replace")
                   for entry in client.lrange(f"{session_env['REDIS_KEY_PREFIX']}dead-letter", 0, -1))
    finally:
        client.close()


def test_nested_headers_with_another_tenant_fail_before_running(worker, client_app) -> None:
    result = client_app.send_task("tests.probe.retry_once", headers={
        "organization_id": ORG, "user_id": USER, "headers": {"organization_id": OTHER_ORG, "user_id": OTHER_USER}})
    assert_refused(result, "nested `headers` dict")


def test_nested_user_of_another_tenant_fails(worker, client_app) -> None:
    result = client_app.send_task("tests.probe.tenant", headers={
        "organization_id": ORG, "user_id": USER, "headers": {"user_id": OTHER_USER}})
    assert_refused(result, "user_id")


@pytest.mark.parametrize("nested", [{"traceparent": "00-abc-def-01"}, {"organization_id": ORG}],
                         ids=["tracing", "same-organization"])
def test_retry_of_a_message_with_a_nested_headers_dict_keeps_the_top_level_tenant(worker, client_app, nested) -> None:
    """Tracing integrations add a nested dict; Celery republishes it, not the top-level headers, on retry."""
    result = client_app.send_task("tests.probe.retry_once", headers={
        "organization_id": ORG, "user_id": USER, "headers": nested})
    seen = result.get(TIMEOUT)
    assert seen["retries"] == 1
    assert (seen["organization_id"], seen["user_id"]) == (ORG, USER)


@pytest.mark.parametrize("embed", [{"organization_id": OTHER_ORG}, {"headers": {"organization_id": OTHER_ORG}}],
                         ids=["tenant-key", "headers-key"])
def test_embedded_options_naming_a_tenant_never_run(worker, client_app, session_env, embed) -> None:
    """Celery applies embedded options over the headers; the consumer's message guard discards such messages."""
    import time

    task_id = publish_raw(client_app, "tests.probe.tenant", {"organization_id": ORG, "user_id": USER}, embed)
    deadline = time.monotonic() + 20
    while not dead_lettered(session_env, task_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert dead_lettered(session_env, task_id)
    assert client_app.AsyncResult(task_id).state == "PENDING"


def test_kwarg_user_of_another_tenant_fails(worker, client_app) -> None:
    result = client_app.send_task("tests.probe.tenant_kw", kwargs={"user_id": OTHER_USER},
                                  headers={"organization_id": ORG, "user_id": USER})
    assert_refused(result, "disagrees")


def test_agreeing_second_sources_are_accepted(worker, client_app) -> None:
    result = client_app.send_task("tests.probe.tenant_kw", kwargs={"organization_id": ORG.upper()},
                                  headers={"organization_id": ORG, "user_id": USER,
                                           "headers": {"organization_id": ORG}})
    seen = result.get(TIMEOUT)
    assert (seen["organization_id"], seen["user_id"]) == (ORG, USER)


@pytest.mark.parametrize("publisher", [(ORG, USER), None], ids=["publisher-tenant", "no-publisher-tenant"])
def test_mixed_tenant_chord_body_runs_as_the_publishers_tenant(worker, client_app, publisher) -> None:
    """The header task of the other tenant finishes last; the body must not take its tenant."""
    header = [probe(client_app, "tenant").s().set(headers={"organization_id": ORG, "user_id": USER}),
              probe(client_app, "sleep").s(1.5).set(headers={"organization_id": OTHER_ORG, "user_id": OTHER_USER})]
    workflow = chord(header, probe(client_app, "tenant").s())
    if publisher:
        with tenant_scope(*publisher):
            result = workflow.apply_async()
    else:
        result = workflow.apply_async()
    seen = result.get(TIMEOUT)
    members = seen["previous"][0]
    assert {m["organization_id"] for m in members} == {ORG, OTHER_ORG}, members  # the headers kept their own
    expected = publisher or (None, None)
    assert (seen["organization_id"], seen["user_id"]) == expected, seen
