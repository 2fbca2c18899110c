"""The tenant survives every way a task can be (re)published, checked in running prefork and threads workers."""

from __future__ import annotations

import time
import uuid

import pytest
from celery import chain, chord, group
from celery.signals import before_task_publish

from worker.tenant.context import Tenant, current_tenant, tenant_scope

ORG = "0b7d4f6e-1c2a-4e58-9a41-6c3f2e1d0a01"
USER = "5a2e9c1b-7d4f-4b3e-8c6a-1f0e9d8c7b02"
OTHER_ORG = "9e8d7c6b-5a49-4838-a726-150493827163"
TIMEOUT = 60


@pytest.fixture(scope="module", params=["prefork", "threads"])
def pool_worker(request, worker_factory):  # type: ignore[no-untyped-def]
    worker = worker_factory(pool=request.param, concurrency=2)
    yield worker
    worker.stop()  # the next pool type must not share the queue with this one


def sig(client_app, name: str, *args, **kwargs):  # type: ignore[no-untyped-def]
    return client_app.tasks[f"tests.probe.{name}"].s(*args, **kwargs)


def tenant_headers(org: str = ORG, user: str | None = USER) -> dict:
    return {"headers": {"organization_id": org, "user_id": user}}


def assert_tenant(seen: dict, org: str = ORG, user: str | None = USER) -> None:
    assert seen["organization_id"] == org, seen
    assert seen["user_id"] == user, seen
    assert seen["request_organization_id"] == org, seen


def test_headers(pool_worker, client_app) -> None:
    assert_tenant(sig(client_app, "tenant").apply_async(**tenant_headers()).get(TIMEOUT))


def test_kwargs_are_moved_into_headers(pool_worker, client_app) -> None:
    published: list[tuple[dict, object]] = []

    def capture(headers=None, body=None, **_):  # type: ignore[no-untyped-def]
        published.append((dict(headers), body))

    before_task_publish.connect(capture, weak=False)
    try:
        task = client_app.tasks["tests.probe.tenant"]
        result = task.apply_async(kwargs={"organization_id": ORG.upper(), "user_id": USER})
    finally:
        before_task_publish.disconnect(capture)
    headers, body = published[-1]
    assert headers["organization_id"] == ORG and headers["user_id"] == USER
    assert body[1] == {}, "the tenant kwargs left the message body"
    assert_tenant(result.get(TIMEOUT))


def test_tenant_kwargs_of_a_task_that_takes_them_also_become_headers(pool_worker, client_app) -> None:
    published: list[dict] = []

    def capture(headers=None, **_):  # type: ignore[no-untyped-def]
        published.append(dict(headers))

    before_task_publish.connect(capture, weak=False)
    try:
        result = client_app.tasks["tests.probe.tenant_kw"].apply_async(kwargs={"organization_id": ORG})
    finally:
        before_task_publish.disconnect(capture)
    assert published[-1]["organization_id"] == ORG
    assert result.get(TIMEOUT)["kw_organization_id"] == ORG


def test_kwargs_only_producer_is_the_fallback(pool_worker, client_app) -> None:
    """A producer that bypasses apply_async (send_task) and sends the tenant only as kwargs."""
    result = client_app.send_task("tests.probe.tenant_kw", kwargs={"organization_id": ORG, "user_id": USER})
    seen = result.get(TIMEOUT)
    assert_tenant(seen)
    assert seen["kw_organization_id"] == ORG


def test_header_kwarg_conflict_is_rejected_not_retried(pool_worker, client_app) -> None:
    result = client_app.send_task("tests.probe.tenant_kw", kwargs={"organization_id": OTHER_ORG},
                                  headers={"organization_id": ORG})
    with pytest.raises(Exception, match="disagrees") as excinfo:
        result.get(TIMEOUT)
    assert type(excinfo.value).__name__ == "TenantConflictError"
    assert result.state == "FAILURE"
    assert (result.retries or 0) == 0


def test_invalid_tenant_id_fails_without_retry(pool_worker, client_app) -> None:
    result = client_app.send_task("tests.probe.tenant", headers={"organization_id": "not-a-uuid"})
    with pytest.raises(Exception, match="not a valid UUID") as excinfo:
        result.get(TIMEOUT)
    assert type(excinfo.value).__name__ == "InvalidTenantError"
    assert (result.retries or 0) == 0


def test_self_retry(pool_worker, client_app) -> None:
    seen = sig(client_app, "retry_once").apply_async(**tenant_headers()).get(TIMEOUT)
    assert_tenant(seen)
    assert seen["retries"] == 1


def test_autoretry(pool_worker, client_app) -> None:
    seen = sig(client_app, "autoretry_once").apply_async(**tenant_headers()).get(TIMEOUT)
    assert_tenant(seen)
    assert seen["retries"] == 1


def test_countdown_and_eta(pool_worker, client_app) -> None:
    assert_tenant(sig(client_app, "tenant").apply_async(countdown=1, **tenant_headers()).get(TIMEOUT))


def test_chain_steps_after_the_first(pool_worker, client_app) -> None:
    workflow = chain(sig(client_app, "tenant"), sig(client_app, "tenant"), sig(client_app, "tenant"))
    last = workflow.apply_async(**tenant_headers()).get(TIMEOUT)
    assert_tenant(last)
    assert_tenant(last["previous"][0])
    assert_tenant(last["previous"][0]["previous"][0])


def test_group_members(pool_worker, client_app) -> None:
    results = group(sig(client_app, "tenant") for _ in range(4)).apply_async(**tenant_headers()).get(TIMEOUT)
    assert len(results) == 4
    for seen in results:
        assert_tenant(seen)


def test_chord_header_and_body(pool_worker, client_app) -> None:
    body = sig(client_app, "tenant")
    seen = chord([sig(client_app, "tenant") for _ in range(3)], body).apply_async(**tenant_headers()).get(TIMEOUT)
    assert_tenant(seen)
    for member in seen["previous"][0]:
        assert_tenant(member)


def test_link_callback(pool_worker, client_app) -> None:
    callback_id = str(uuid.uuid4())
    sig(client_app, "tenant").apply_async(link=sig(client_app, "tenant").set(task_id=callback_id),
                                          **tenant_headers()).get(TIMEOUT)
    assert_tenant(client_app.AsyncResult(callback_id).get(TIMEOUT))


def test_link_error_callback(pool_worker, client_app) -> None:
    errback_id = str(uuid.uuid4())
    failing = sig(client_app, "fail_permanently").apply_async(
        link_error=sig(client_app, "errback").set(task_id=errback_id), **tenant_headers())
    with pytest.raises(Exception, match="cannot be fixed"):
        failing.get(TIMEOUT)
    seen = client_app.AsyncResult(errback_id).get(TIMEOUT)
    assert_tenant(seen)
    assert seen["failed_task_id"] == failing.id


def test_replace(pool_worker, client_app) -> None:
    assert_tenant(sig(client_app, "replace_with_tenant").apply_async(**tenant_headers()).get(TIMEOUT))


def test_child_task_inherits_parent_tenant(pool_worker, client_app) -> None:
    child_id = sig(client_app, "spawn_child").apply_async(**tenant_headers()).get(TIMEOUT)
    assert_tenant(client_app.AsyncResult(child_id).get(TIMEOUT))


def test_child_task_sent_with_delay_inherits(pool_worker, client_app) -> None:
    child_id = sig(client_app, "spawn_with_delay").apply_async(**tenant_headers()).get(TIMEOUT)
    assert_tenant(client_app.AsyncResult(child_id).get(TIMEOUT))


def test_child_with_countdown_inherits(pool_worker, client_app) -> None:
    child_id = sig(client_app, "spawn_child", countdown=1).apply_async(**tenant_headers()).get(TIMEOUT)
    assert_tenant(client_app.AsyncResult(child_id).get(TIMEOUT))


def test_child_task_keeps_its_own_tenant(pool_worker, client_app) -> None:
    child_id = sig(client_app, "spawn_child", OTHER_ORG).apply_async(**tenant_headers()).get(TIMEOUT)
    assert_tenant(client_app.AsyncResult(child_id).get(TIMEOUT), org=OTHER_ORG, user=None)


def test_no_tenant_is_inherited_from_the_previous_task(pool_worker, client_app) -> None:
    """Alternate tenant and no-tenant messages on the same pool processes/threads."""
    sends = []
    for i in range(20):
        if i % 2:
            sends.append((None, sig(client_app, "tenant").apply_async()))
        else:
            sends.append((ORG, sig(client_app, "tenant").apply_async(**tenant_headers())))
    for org, result in sends:
        seen = result.get(TIMEOUT)
        assert seen["organization_id"] == org
        if org is None:
            assert seen["user_id"] is None


def test_no_tenant_after_retry_or_replace_even_inline_or_in_plain_tasks(worker_factory, client_app) -> None:
    """Retry and replace skip Task.after_return; the tenant must not survive them into the next task."""
    for pool in ("prefork", "threads"):
        worker = worker_factory(pool=pool, concurrency=1)
        try:
            for _ in range(2):
                assert_tenant(sig(client_app, "retry_once").apply_async(**tenant_headers()).get(TIMEOUT))
                assert_tenant(sig(client_app, "replace_with_tenant").apply_async(**tenant_headers()).get(TIMEOUT))
                # celery.map runs its members inline, without before_start
                for seen in client_app.tasks["tests.probe.tenant"].map([1, 2]).apply_async().get(TIMEOUT):
                    assert seen["organization_id"] is None, (pool, seen)
                mapped = client_app.tasks["tests.probe.tenant"].map([1, 2]).apply_async(
                    headers={"organization_id": OTHER_ORG})
                for seen in mapped.get(TIMEOUT):
                    assert seen["organization_id"] == OTHER_ORG, (pool, seen)
                assert_tenant(sig(client_app, "retry_once").apply_async(**tenant_headers()).get(TIMEOUT))
                child_id = client_app.tasks["tests.probe.plain_spawn"].apply_async().get(TIMEOUT)
                assert client_app.AsyncResult(child_id).get(TIMEOUT)["organization_id"] is None, pool
        finally:
            worker.stop()


def test_eager_tasks_inherit_and_restore_the_callers_tenant(client_app) -> None:
    task = client_app.tasks["tests.probe.tenant"]
    with tenant_scope(ORG, USER):
        seen = task.apply().get()
        assert seen["organization_id"] == ORG and seen["user_id"] == USER
        assert current_tenant() == Tenant(ORG, USER)
        other = task.apply(headers={"organization_id": OTHER_ORG}).get()
        assert other["organization_id"] == OTHER_ORG
        assert current_tenant() == Tenant(ORG, USER)
    assert task.apply().get()["organization_id"] is None


def test_no_tenant_after_a_failed_task(pool_worker, client_app) -> None:
    failures = [sig(client_app, "fail_permanently").apply_async(**tenant_headers()) for _ in range(4)]
    for failure in failures:
        with pytest.raises(Exception, match="cannot be fixed"):
            failure.get(TIMEOUT)
    plain = [sig(client_app, "tenant").apply_async() for _ in range(4)]
    for result in plain:
        assert result.get(TIMEOUT)["organization_id"] is None


def test_echo_task(pool_worker, client_app) -> None:
    result = client_app.tasks["rhesis.backend.tasks.echo"].apply_async(args=["hi"], **tenant_headers())
    assert result.get(TIMEOUT) == f"Message: hi, Organization: {ORG}, User: {USER}"
    anonymous = client_app.tasks["rhesis.backend.tasks.echo"].apply_async(args=["hi"])
    assert anonymous.get(TIMEOUT) == "Message: hi, Organization: unknown, User: unknown"


def test_retries_exhausted_store_the_error(pool_worker, client_app) -> None:
    result = sig(client_app, "always_fails").apply_async(**tenant_headers())
    with pytest.raises(Exception, match="attempt 2"):
        result.get(TIMEOUT)
    assert result.state == "FAILURE"
    assert type(result.result).__name__ == "TransientError"
    assert result.retries == 2


def test_log_lines_carry_task_and_tenant(pool_worker, client_app) -> None:
    result = sig(client_app, "tenant").apply_async(**tenant_headers())
    result.get(TIMEOUT)
    deadline = time.monotonic() + 10  # the worker may still be writing the lines that follow the result
    while True:
        lines = [line for line in pool_worker.log().splitlines() if result.id in line]
        done = [line for line in lines if "succeeded in" in line or "outcome=success runtime=" in line]
        if len(done) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(done) == 2, lines
    for line in done:  # emitted while the task ran (not the consumer's "received" line)
        assert f"[task_id={result.id} task=tests.probe.tenant organization_id={ORG} user_id={USER}]" in line


@pytest.mark.parametrize(("probe", "limit"), [("sleep", {"soft_time_limit": 0.5}),
                                              ("outlive_soft_limit", {"soft_time_limit": 0.3, "time_limit": 1})],
                         ids=["soft", "hard"])
def test_no_tenant_after_a_time_limit(pool_worker, client_app, request, probe, limit) -> None:
    if "threads" in request.node.callspec.id:
        pytest.skip("the threads pool does not enforce time limits (Celery limitation)")
    slow = [sig(client_app, probe, 3).apply_async(**limit, **tenant_headers()) for _ in range(2)]
    for result in slow:
        with pytest.raises(Exception, match=r"TimeLimitExceeded|Time limit|time limit"):
            result.get(TIMEOUT)
    for result in [sig(client_app, "tenant").apply_async() for _ in range(4)]:
        seen = result.get(TIMEOUT)
        assert seen["organization_id"] is None and seen["user_id"] is None


def test_tenant_headers_are_built_in_one_place() -> None:
    from worker.tenant.context import NO_TENANT, Tenant

    assert Tenant.of(ORG.upper()).headers() == {"organization_id": ORG, "user_id": None}
    assert Tenant.of(ORG, OTHER_ORG).headers() == {"organization_id": ORG, "user_id": OTHER_ORG}
    assert NO_TENANT.headers() == {}
