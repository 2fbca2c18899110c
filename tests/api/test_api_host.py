"""The router mounted in a host backend's own FastAPI app, with the host's current-user dependency (in-process,
served by uvicorn on loopback); and the service's command line: refusals, ``api-token``, a plugged-in --auth."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.conftest import ROOT
from tests.support.api_client import ApiClient, start_api_process
from tests.support.execution_data import ExecutionData
from worker.dev.services import free_port

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def host(api_worker, client_app, migrated_database) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A host app: its own routes and authentication, the router under /api/v1."""
    import uvicorn
    from fastapi import FastAPI

    from tests.support.api_host import header_user
    from worker.api import create_router
    from worker.db.engine import get_engine

    app = FastAPI(title="host backend")

    @app.get("/hello")
    def hello() -> dict[str, str]:
        return {"host": "yes"}

    app.include_router(create_router(header_user, celery_app=client_app,
                                     engine=get_engine(migrated_database.runtime_url), events_interval=0.2),
                       prefix="/api/v1")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def as_user(url: str, organization_id: str, user_id: str | None = None) -> ApiClient:
    """A client of the host, signed in the host's way (tests/support/api_host.py)."""
    return ApiClient(url, headers={"X-Organization-Id": organization_id, **({"X-User-Id": user_id} if user_id else {})})


def call(client: ApiClient, method: str, path: str):  # type: ignore[no-untyped-def]
    return client.call(method, path)


def test_a_host_mounts_the_router_with_its_own_user(host: str, data: ExecutionData, server) -> None:
    configuration = data.configuration(server.url + "/chat", 2)
    mine = as_user(host, configuration.organization_id, configuration.user_id)
    launched = call(mine, "POST", f"/api/v1/test_configurations/{configuration.configuration_id}/execute")
    assert launched.status == 202, launched.body
    run_id = launched.json()["test_run_id"]
    events = [e.name for e in mine.events(f"/api/v1/test_runs/{run_id}/events")]
    assert events[-1] == "end"
    run = call(mine, "GET", f"/api/v1/test_runs/{run_id}").json()
    assert run["status"] == "completed" and run["done"] == 2
    # A host user the database does not know still executes as its organization; the run then names no user.
    stranger = as_user(host, configuration.organization_id, str(uuid.uuid4()))
    assert call(stranger, "GET", f"/api/v1/test_runs/{run_id}").status == 200

    # Another organization, an unknown id: the same 404; the router's error shape without any handler of the host.
    other = data.configuration(server.url + "/chat", 1)
    theirs = as_user(host, other.organization_id, other.user_id)
    assert call(theirs, "GET", f"/api/v1/test_runs/{run_id}").json() == \
        {"error": {"code": "not_found", "message": "not found"}}
    invalid = call(mine, "GET", f"/api/v1/test_runs/{run_id}/results?limit=0")
    assert invalid.status == 422 and invalid.json()["error"]["code"] == "invalid_request", invalid.body
    # The host authenticates; the router never does: the host's own 401 comes through as the host wrote it.
    anonymous = ApiClient(host).get(f"/api/v1/test_runs/{run_id}")
    assert (anonymous.status, anonymous.json()) == (401, {"detail": "host: not signed in"})
    # A user object without a valid organization (a host bug) is refused, not trusted.
    broken = as_user(host, "not-a-uuid", configuration.user_id)
    assert call(broken, "GET", f"/api/v1/test_runs/{run_id}").json()["error"]["code"] == "forbidden"
    assert ApiClient(host).get("/hello").json() == {"host": "yes"}
    paths = ApiClient(host).get("/openapi.json").json()["paths"]
    assert "/api/v1/tasks/{task_id}" in paths and "/api/v1/test_runs/{test_run_id}/events" in paths


def run_api(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "worker", "api", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize(("secret", "message"), [
    ("", "configuration error: API_TOKEN_SECRET is empty;"),
    ("change-me-" + "0" * 32, "configuration error: API_TOKEN_SECRET=(hidden) key 1 is not a random key;"),
])
def test_the_service_refuses_to_start_without_a_real_secret(secret: str, message: str, session_env) -> None:
    import os

    env = {**os.environ, **session_env, "API_TOKEN_SECRET": secret, "API_PORT": str(free_port())}
    done = run_api(env)
    assert done.returncode == 64, done.stderr
    assert done.stderr.strip().splitlines() == [next(line for line in done.stderr.splitlines() if message in line)]


def test_api_token_mints_tokens_for_users_of_the_database_only(api, api_env, data: ExecutionData, server) -> None:
    import os

    configuration = data.configuration(server.url + "/chat", 1)
    env = {**os.environ, **api_env}

    def api_token(org: str, user: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "worker", "api-token", "--organization-id", org, "--user-id",
                               user], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)

    minted = api_token(configuration.organization_id, configuration.user_id)
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    assert token.startswith(f"tw1.{configuration.organization_id}.{configuration.user_id}.")
    client = ApiClient(api.url, token)
    launched = client.post(f"/test_configurations/{configuration.configuration_id}/execute")
    assert launched.status == 202, launched.body
    refused = api_token(configuration.organization_id, str(uuid.uuid4()))
    assert refused.returncode == 1 and "has no user" in refused.stderr and refused.stdout == ""


def test_the_service_takes_another_authentication(session_env, run_dir, data: ExecutionData, server) -> None:
    configuration = data.configuration(server.url + "/chat", 1)
    process = start_api_process({**session_env, "API_TOKEN_SECRET": ""}, run_dir, free_port(),
                                ("--auth", "tests.support.api_host:header_user"))
    try:
        mine = as_user(process.url, configuration.organization_id, configuration.user_id)
        launched = call(mine, "POST", f"/test_configurations/{configuration.configuration_id}/execute")
        assert launched.status == 202, launched.body
        assert ApiClient(process.url).get(f"/test_runs/{launched.json()['test_run_id']}").status == 401
    finally:
        process.stop()
    assert "Traceback" not in process.log(), process.log()[-3000:]


def test_the_healthcheck_of_an_api_container_asks_the_api(api) -> None:
    """`python -m worker healthcheck` (the image's HEALTHCHECK, the chart's probes) in an API container."""
    import os
    import signal

    def healthcheck() -> subprocess.CompletedProcess:
        env = {**os.environ, "WORKER_HEALTH_DIR": api.env["WORKER_HEALTH_DIR"], "API_PORT": "1"}
        return subprocess.run([sys.executable, "-m", "worker", "healthcheck"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=30)

    healthy = healthcheck()
    port = api.url.rsplit(":", 1)[1]
    assert (healthy.returncode, healthy.stdout.strip()) == (0, f"healthy: the API answers on port {port}")
    api.proc.send_signal(signal.SIGSTOP)  # alive but not answering
    try:
        stuck = healthcheck()
    finally:
        api.proc.send_signal(signal.SIGCONT)
    assert stuck.returncode == 1 and stuck.stdout.startswith("unhealthy: the API"), stuck.stdout


def test_execute_without_a_broker_answers_503_and_fails_the_run(api_env, run_dir, data: ExecutionData,
                                                                  server, api_keys) -> None:
    """No run may wait forever for a message that was never sent."""
    from worker.api.tokens import mint

    configuration = data.configuration(server.url + "/chat", 1)
    nowhere = f"redis://127.0.0.1:{free_port()}"
    process = start_api_process({**api_env, "BROKER_URL": f"{nowhere}/0", "CELERY_RESULT_BACKEND": f"{nowhere}/1"},
                                run_dir, free_port())
    try:
        client = ApiClient(process.url, mint(api_keys, configuration.organization_id, configuration.user_id))
        answer = client.post(f"/test_configurations/{configuration.configuration_id}/execute")
    finally:
        process.stop()
    assert answer.status == 503, answer.body
    assert answer.json()["error"]["code"] == "unavailable" and answer.headers.get("retry-after") == "5"
    runs = data.runs(configuration.organization_id)
    assert [(r.status, r.error) for r in runs] == [("failed", "the execute task could not be enqueued")]
    assert nowhere not in answer.body.decode()
