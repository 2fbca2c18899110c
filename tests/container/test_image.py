"""The image: built in this test session (docker if a daemon answers, else podman), then run against the
machine's Redis and PostgreSQL with ``--network host``, ``--read-only`` and a tmpfs ``/tmp``."""

from __future__ import annotations

import json
import secrets
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.container.conftest import client_for, wait_for
from tests.container.test_entrypoint import http_status
from worker.dev.services import free_port

pytestmark = [pytest.mark.container, pytest.mark.timeout(900)]


UID = "10001"


@dataclass
class Container:
    engine: list[str]
    name: str
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([*self.engine, *args], capture_output=True, text=True, timeout=timeout, check=check)

    def exec(self, *command: str, check: bool = False) -> subprocess.CompletedProcess:
        return self.run("exec", self.name, *command, check=check)

    def inspect(self, template: str) -> str:
        return self.run("inspect", "--format", template, self.name).stdout.strip()

    def logs(self) -> str:
        done = self.run("logs", self.name, check=False)
        return done.stdout + done.stderr

    def running(self) -> bool:
        return self.inspect("{{.State.Running}}") == "true"

    def health(self) -> str:
        """Run the image's HEALTHCHECK now and return the recorded status."""
        if self.engine[0] == "podman":
            self.run("healthcheck", "run", self.name, check=False)
        return self.inspect("{{json .State.Health}}")


@pytest.fixture()
def start_container(engine: list[str], image: str, redis_db_number: int, container_db) -> Iterator:  # type: ignore[no-untyped-def]
    started: list[Container] = []

    def start(extra_env: dict[str, str] | None = None, *, command: tuple[str, ...] = ()) -> Container:
        token = secrets.token_hex(4)
        env = {
            "BROKER_URL": f"redis://127.0.0.1:6379/{redis_db_number}",
            "CELERY_RESULT_BACKEND": f"redis://127.0.0.1:6379/{redis_db_number}",
            "DATABASE_URL": container_db.runtime_url,
            "REDIS_KEY_PREFIX": f"twimg-{token}:",
            "CELERY_WORKER_HOSTNAME": f"img-{token}@localhost",
            "CELERY_WORKER_CONCURRENCY": "2",
            "WORKER_HEARTBEAT_INTERVAL": "2",
            "WORKER_HEARTBEAT_MAX_AGE": "10",
            **(extra_env or {}),
        }
        container = Container(engine, f"twimg-{token}", env)
        args = ["run", "--detach", "--name", container.name, "--network", "host", "--read-only",
                "--tmpfs", "/tmp:rw,mode=1777,size=64m"]
        for key, value in env.items():
            args += ["--env", f"{key}={value}"]
        container.run(*args, image, *command, timeout=120)
        started.append(container)
        return container

    yield start
    for container in started:
        subprocess.run([*engine, "rm", "--force", container.name], capture_output=True, check=False, timeout=120)


def wait_for_worker(container: Container, client, timeout: float = 90) -> None:  # type: ignore[no-untyped-def]
    node = container.env["CELERY_WORKER_HOSTNAME"]

    def answers() -> bool:
        assert container.running(), f"container exited:\n{container.logs()[-4000:]}"
        return bool(client.control.ping(destination=[node], timeout=1.0))

    wait_for(answers, timeout, 0.5, f"worker {node} in the container")


def test_image_runs_a_task_as_non_root_on_a_read_only_filesystem_and_stops_cleanly(start_container):
    container = start_container()
    client = client_for(container.env, "image-test-client")
    try:
        wait_for_worker(container, client)
        organization, user = str(uuid.uuid4()), str(uuid.uuid4())
        result = client.send_task("rhesis.backend.tasks.echo", args=["from the host"],
                                  headers={"organization_id": organization, "user_id": user})
        assert result.get(timeout=30) == f"Message: from the host, Organization: {organization}, User: {user}"
    finally:
        client.close()

    # Every process in the container (tini, celery and its pool) runs as the image's non-root user.
    assert container.inspect("{{.Config.User}}") == f"{UID}:{UID}"
    statuses = container.exec("sh", "-c", "grep -h '^Uid:' /proc/[0-9]*/status", check=True).stdout.splitlines()
    assert len(statuses) >= 3
    assert all(line.split()[1:] == [UID] * 4 for line in statuses), statuses
    assert container.exec("cat", "/proc/1/comm").stdout.strip() == "tini"

    # Read-only root filesystem: nothing outside /tmp is writable, and the worker does not need it to be.
    assert container.inspect("{{.HostConfig.ReadonlyRootfs}}") == "true"
    for path in ("/app/probe", "/opt/venv/probe", "/usr/local/bin/probe"):
        assert container.exec("touch", path).returncode != 0, path
    assert container.exec("test", "-f", "/tmp/worker-health/heartbeat").returncode == 0
    # Any other command runs as given, with the product's app as Celery's default.
    node = container.env["CELERY_WORKER_HOSTNAME"]
    ping = container.run("exec", container.name, "/usr/local/bin/entrypoint.sh", "celery", "inspect", "ping",
                         "--destination", node, check=False)
    assert ping.returncode == 0 and node in ping.stdout, ping.stdout + ping.stderr
    # Nothing from the build context but the code: no tests, no .env, no git history.
    assert container.exec("sh", "-c", "ls -A /app").stdout == ""
    assert container.exec("sh", "-c", "find / -xdev \\( -name .env -o -name .git -o -name conftest.py \\) "
                          "-print 2>/dev/null").stdout == ""

    health = json.loads(wait_for(lambda: '"healthy"' in container.health() and container.health(), 60, 2,
                                 "HEALTHCHECK healthy"))
    assert health["Status"] == "healthy"

    started = time.monotonic()
    container.run("stop", "--time", "30", container.name, timeout=90)
    assert time.monotonic() - started < 30, "stopped by the grace-period SIGKILL, not by itself"
    assert container.inspect("{{.State.ExitCode}}") == "0"
    assert "Warm shutdown" in container.logs()


def test_image_healthcheck_fails_while_the_worker_is_frozen(start_container):
    container = start_container({"WORKER_HEARTBEAT_INTERVAL": "1", "WORKER_HEARTBEAT_MAX_AGE": "3"})
    client = client_for(container.env, "image-health-client")
    try:
        wait_for_worker(container, client)
    finally:
        client.close()
    wait_for(lambda: '"healthy"' in container.health(), 30, 1, "healthy")
    # PID 1 is tini; its child is the worker's main process (the entrypoint exec'd it).
    find_child = 'for p in /proc/[0-9]*; do [ "$(cut -d" " -f4 "$p/stat")" = 1 ] && echo "${p#/proc/}"; done'
    main_pid = container.exec("sh", "-c", find_child).stdout.split()[0]
    container.exec("sh", "-c", f"kill -STOP {main_pid}", check=True)
    try:
        wait_for(lambda: container.exec("/usr/local/bin/entrypoint.sh", "healthcheck").returncode == 1, 20, 1,
                 "unhealthy while the worker is stopped")
    finally:
        container.exec("sh", "-c", f"kill -CONT {main_pid}", check=True)
    wait_for(lambda: container.exec("/usr/local/bin/entrypoint.sh", "healthcheck").returncode == 0, 20, 1,
             "healthy again")


def test_image_runs_flower_beside_the_worker_and_stops_both(start_container):
    port = free_port()
    container = start_container({"ENABLE_FLOWER": "yes", "FLOWER_PORT": str(port),
                                 "FLOWER_BASIC_AUTH": "admin:image-secret"})
    client = client_for(container.env, "image-flower-client")
    try:
        wait_for_worker(container, client)
    finally:
        client.close()
    wait_for(lambda: http_status(f"http://127.0.0.1:{port}/healthcheck") == 200, 60, 0.5, "Flower")
    assert http_status(f"http://127.0.0.1:{port}/api/workers") == 401
    assert http_status(f"http://127.0.0.1:{port}/api/workers", ("admin", "image-secret")) == 200
    assert "image-secret" not in container.logs()

    started = time.monotonic()
    container.run("stop", "--time", "30", container.name, timeout=90)
    assert time.monotonic() - started < 30
    assert container.inspect("{{.State.ExitCode}}") == "0"
    logs = container.logs()
    assert "SIGTERM received: forwarding" in logs and "Warm shutdown" in logs


def test_image_refuses_a_bad_value_before_starting(start_container):
    container = start_container({"CELERY_WORKER_POOL": "eventlet"})
    wait_for(lambda: not container.running(), 60, 0.5, "the container to exit")
    assert container.inspect("{{.State.ExitCode}}") == "64"
    assert "CELERY_WORKER_POOL='eventlet'" in container.logs()


def test_image_serves_the_api_behind_tokens_and_stops_cleanly(start_container, migrated_database):
    from tests.support.api_client import ApiClient
    from tests.support.execution_data import ExecutionData
    from tests.support.secret_watch import register_secret
    from worker.api.tokens import mint

    key = secrets.token_hex(32)
    register_secret("API_TOKEN_SECRET of the image test", key)
    data = ExecutionData(migrated_database.owner_url)
    try:
        org, user = data.organization("image api")
        port = free_port()
        container = start_container({"API_TOKEN_SECRET": key, "API_PORT": str(port),
                                     "DATABASE_URL": migrated_database.runtime_url}, command=("api",))
        client = ApiClient(f"http://127.0.0.1:{port}")

        def answers() -> bool:
            assert container.running(), f"container exited:\n{container.logs()[-4000:]}"
            return http_status(f"{client.base_url}/healthz") == 200

        wait_for(answers, 90, 0.5, "the API in the container")
        run = f"/test_runs/{uuid.uuid4()}"
        assert client.get(run).status == 401
        assert client.as_token(mint((key,), org, user)).get(run).json() == \
            {"error": {"code": "not_found", "message": "not found"}}  # authenticated through the database
        assert '"Status":"healthy"' in container.health().replace(" ", "")
        container.run("stop", "--time", "30", container.name, timeout=90)
        assert container.inspect("{{.State.ExitCode}}") == "0"
        logs = container.logs()
        assert "setting API_TOKEN_SECRET=(set)" in logs and key not in logs and "Traceback" not in logs
    finally:
        data.close()
