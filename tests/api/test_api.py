"""The task and run API end to end: the service as a real process, a real worker, Redis and PostgreSQL.

Ownership: every id of another organization is answered exactly like an unknown id (the same 404 body).
"""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from tests.support.api_client import ApiClient
from tests.support.execution_data import ExecutionData

pytestmark = pytest.mark.timeout(180)

NOT_FOUND = {"error": {"code": "not_found", "message": "not found"}}
FINAL = ("completed", "partial", "failed", "cancelled")


def wait_for(client: ApiClient, path: str, done, timeout: float = 60):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        answer = client.get(path)
        assert answer.status == 200, (answer.status, answer.body)
        if done(answer.json()):
            return answer.json()
        assert time.monotonic() < deadline, answer.json()
        time.sleep(0.2)


def test_execute_returns_a_task_that_completes_and_the_run_with_its_results(api_worker, tenant) -> None:
    configuration, client = tenant(tests=7)
    launched = client.post(f"/test_configurations/{configuration.configuration_id}/execute")
    assert launched.status == 202, launched.body
    body = launched.json()
    assert set(body) == {"task_id", "test_run_id"}
    task = wait_for(client, f"/tasks/{body['task_id']}", lambda t: t["status"] == "SUCCESS")
    assert task["result"]["test_run_id"] == body["test_run_id"] and task["error"] is None
    assert task["result"]["created"] is False  # the API made the run; the task found it by its task id
    run = wait_for(client, f"/test_runs/{body['test_run_id']}", lambda r: r["status"] in FINAL)
    assert run["status"] == "completed" and run["task_id"] == body["task_id"]
    assert run["total_tests"] == run["done"] == 7 and run["progress"] == 1
    assert run["counts"] == {"pass": 0, "fail": 0, "error": 0, "not_scored": 7, "cancelled": 0}
    assert run["started_at"] and run["finished_at"] and run["duration_seconds"] >= 0

    first = client.get(f"/test_runs/{body['test_run_id']}/results?limit=5").json()
    second = client.get(f"/test_runs/{body['test_run_id']}/results?limit=5&offset=5").json()
    assert first["total"] == 7 and len(first["items"]) == 5 and first["next_offset"] == 5
    assert len(second["items"]) == 2 and second["next_offset"] is None
    items = first["items"] + second["items"]
    assert sorted(item["test_id"] for item in items) == sorted(configuration.test_ids)
    assert all(item["output"] == f"echo: {item['prompt']}" and item["status"] == "not_scored" for item in items)
    assert client.get(f"/test_runs/{body['test_run_id']}/results?status=fail").json()["total"] == 0


def test_another_organization_gets_the_unknown_id_answer_for_everything(api_worker, tenant, data: ExecutionData,
                                                                        server) -> None:
    mine, client = tenant(tests=3)
    theirs, other = tenant(tests=3)
    server.hold()  # the victim's run stays active while the other organization tries to cancel it
    launched = client.post(f"/test_configurations/{mine.configuration_id}/execute").json()
    run_id, task_id = launched["test_run_id"], launched["task_id"]
    wait_for(client, f"/test_runs/{run_id}", lambda r: r["status"] == "running")

    unknown_run, unknown_task = str(uuid.uuid4()), str(uuid.uuid4())
    probes = [
        ("POST", f"/test_configurations/{mine.configuration_id}/execute"),
        ("GET", f"/tasks/{task_id}"),
        ("GET", f"/test_runs/{run_id}"),
        ("GET", f"/test_runs/{run_id}/results"),
        ("POST", f"/test_runs/{run_id}/cancel"),
        ("GET", f"/test_runs/{run_id}/events"),
    ]
    for method, path in probes:
        foreign = other.call(method, path)
        unknown = other.call(method, path.replace(run_id, unknown_run).replace(task_id, unknown_task)
                             .replace(mine.configuration_id, str(uuid.uuid4())))
        malformed = other.call(method, path.replace(run_id, "x").replace(task_id, "x%00")
                               .replace(mine.configuration_id, "nope"))
        for answer in (foreign, unknown, malformed):
            assert (answer.status, answer.json()) == (404, NOT_FOUND), (method, path, answer.body)
        assert foreign.body == unknown.body == malformed.body
        assert foreign.headers.get("Content-Length") == unknown.headers.get("Content-Length")

    # Nothing happened to the victim's run, and the foreign execute created no run anywhere.
    run = client.get(f"/test_runs/{run_id}").json()
    assert run["status"] == "running" and run["cancel_requested"] is False
    assert data.run_count(mine.organization_id) == 1 and data.run_count(theirs.organization_id) == 0
    server.release()
    assert wait_for(client, f"/test_runs/{run_id}", lambda r: r["status"] in FINAL)["status"] == "completed"


def test_a_task_is_known_while_it_has_no_result_yet_or_any_more(api_worker, tenant, session_env,
                                                                client_app) -> None:
    configuration, client = tenant(tests=1)
    launched = client.post(f"/test_configurations/{configuration.configuration_id}/execute").json()
    wait_for(client, f"/tasks/{launched['task_id']}", lambda t: t["status"] == "SUCCESS")
    # The result expires (RESULT_EXPIRES): ownership lives in PostgreSQL, so the task is still the caller's.
    results = redis.Redis.from_url(session_env["CELERY_RESULT_BACKEND"])
    key = client_app.backend.get_key_for_task(launched["task_id"])  # with REDIS_KEY_PREFIX
    assert results.delete(key) == 1
    answer = client.get(f"/tasks/{launched['task_id']}")
    assert (answer.status, answer.json()) == (200, {"task_id": launched["task_id"], "status": "PENDING",
                                                    "result": None, "error": None})


def test_the_event_stream_shows_progress_while_the_run_goes_on_then_ends(api_worker, tenant, server) -> None:
    configuration, client = tenant(tests=4)
    server.hold()  # no test can finish before the stream has shown the run running
    launched = client.post(f"/test_configurations/{configuration.configuration_id}/execute").json()
    path = f"/test_runs/{launched['test_run_id']}/events"
    seen = []
    for event in client.events(path):
        seen.append(event)
        if event.name == "progress" and event.data["status"] == "running":
            server.release()
    names = [event.name for event in seen]
    assert names[-1] == "end" and set(names[:-1]) == {"progress"}, names
    running = [e.data for e in seen if e.name == "progress" and e.data["status"] == "running"]
    assert running and running[0]["done"] < running[0]["total_tests"] == 4 and running[0]["progress"] < 1
    final = seen[-1].data
    assert final["status"] == "completed" and final["done"] == 4 and final["progress"] == 1
    assert final["counts"]["not_scored"] == 4 and final["id"] == launched["test_run_id"]
    run = client.get(f"/test_runs/{launched['test_run_id']}").json()
    assert {k: v for k, v in final.items() if k != "duration_seconds"} == \
        {k: v for k, v in run.items() if k != "duration_seconds"}  # the same body as GET /test_runs/{id}
    done = [e.data["done"] for e in seen]
    assert done == sorted(done)
    assert [int(e.id) for e in seen] == list(range(1, len(seen) + 1))
    # A run that has ended: one end event at once, then the stream closes.
    again = list(client.events(path))
    assert [e.name for e in again] == ["end"] and again[0].data["status"] == "completed"


def test_cancel_stops_the_callers_run_and_keeps_it_readable(api_worker, tenant, server) -> None:
    configuration, client = tenant(tests=5)
    server.hold()
    launched = client.post(f"/test_configurations/{configuration.configuration_id}/execute").json()
    run_path = f"/test_runs/{launched['test_run_id']}"
    wait_for(client, run_path, lambda r: r["status"] == "running")
    answer = client.post(f"{run_path}/cancel")
    assert answer.status == 200, answer.body
    assert answer.json()["cancel_requested"] is True and answer.json()["status"] in ("running", "cancelled")
    # Every call is still held: the lanes cancel them, and the run ends with no answer received.
    run = wait_for(client, run_path, lambda r: r["status"] in FINAL)
    server.release()
    assert run["status"] == "cancelled" and run["done"] == 5 and run["counts"]["cancelled"] == 5
    assert client.post(f"{run_path}/cancel").json()["status"] == "cancelled"  # idempotent
    page = client.get(f"{run_path}/results?status=cancelled").json()
    assert page["total"] == run["counts"]["cancelled"] and {i["status"] for i in page["items"]} == {"cancelled"}


def test_a_failed_task_shows_its_error_without_traceback_or_secret(api_worker, tenant, data: ExecutionData,
                                                                   client_app) -> None:
    configuration, client = tenant(tests=1)
    task_id, secret = str(uuid.uuid4()), f"pw-{uuid.uuid4().hex}"
    data.pre_created_run(configuration, task_id)  # what the execute route records before it publishes
    failed = client_app.send_task("tests.probe.fail_quoting", args=[secret], task_id=task_id,
                                  headers={"organization_id": configuration.organization_id})
    with pytest.raises(RuntimeError):
        failed.get(timeout=30)
    answer = client.get(f"/tasks/{task_id}")
    assert answer.status == 200, answer.body
    body = answer.json()
    assert body["status"] == "FAILURE" and body["result"] is None
    assert body["error"].startswith("RuntimeError: the task failed")
    assert secret not in answer.body.decode() and "postgresql://" not in answer.body.decode()
    assert "Traceback" not in answer.body.decode()


@pytest.mark.parametrize("kind", ["none", "not bearer", "garbage", "other key", "expired", "unknown user",
                                  "user of another organization"])
def test_requests_without_a_valid_token_get_401(kind: str, api, tenant, api_keys) -> None:
    from worker.api.tokens import mint

    configuration, client = tenant(tests=1)
    other, _ = tenant(tests=1)
    org, user = configuration.organization_id, configuration.user_id
    tokens = {
        "none": None,
        "garbage": "tw1.not.a.token",
        "other key": mint(("k" * 8 + uuid.uuid4().hex,), org, user),
        "expired": mint(api_keys, org, user, lifetime=1, now=time.time() - 60),
        "unknown user": mint(api_keys, org, str(uuid.uuid4())),
        "user of another organization": mint(api_keys, org, other.user_id),
    }
    if kind == "not bearer":
        answer = ApiClient(api.url).call("GET", f"/test_runs/{uuid.uuid4()}",
                                         headers={"Authorization": "Basic dXNlcjpwYXNz"})
    else:
        answer = client.as_token(tokens[kind]).get(f"/test_runs/{uuid.uuid4()}")
    assert answer.status == 401 and answer.json()["error"]["code"] == "unauthorized", answer.body
    assert answer.headers.get("www-authenticate") == "Bearer"
    assert client.get(f"/test_runs/{uuid.uuid4()}").status == 404  # the valid token passes, the id is unknown
