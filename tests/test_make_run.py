"""`make run` (python -m worker.dev.run): provisions, migrates, fills demo data, starts worker and Flower; the command
it prints really sends a task from another shell; Ctrl-C stops the worker warmly and then the servers.

Two ways: with the user's own broker (password protected, BROKER_URL alone) and the machine's PostgreSQL, and on a
bare machine's path (WORKER_DEV_EMBEDDED=1: embedded Redis and PostgreSQL in a private WORKER_DEV_RUN_DIR)."""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.conftest import ROOT
from tests.support.secret_watch import register_secret, register_url
from worker.dev.environment import derive_result_backend
from worker.dev.provision import drop_development_databases, read_development_states
from worker.dev.services import LOCAL_HOST, free_port, port_open, start_redis

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
CONNECTION_VARIABLES = ("BROKER_URL", "CELERY_RESULT_BACKEND", "DATABASE_URL", "MIGRATION_DATABASE_URL",
                        "REDIS_KEY_PREFIX", "FLOWER_BASIC_AUTH", "ENABLE_FLOWER", "WORKER_DEV_EMBEDDED", "API_")


def clean_environment() -> dict[str, str]:
    """The environment of a fresh shell: none of the settings make run or the test decide."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(CONNECTION_VARIABLES) and not k.startswith(("CELERY_", "FLOWER_", "WORKER_"))}


def http_get(url: str, auth: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)  # noqa: S310 - loopback only
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - loopback only
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except OSError:
        return 0, b""


def readme_python_snippet(section: str) -> str:
    text = (ROOT / "README.md").read_text()
    body = text[text.index(section):]
    return body[body.index("```python\n") + len("```python\n"):body.index("\n```", body.index("```python"))]


@pytest.fixture
def dev_run_dir(run_dir: Path) -> Iterator[Path]:
    """A private WORKER_DEV_RUN_DIR. Not under tmp_path: embedded PostgreSQL runs as another user, and every pytest
    session (also other people's) resets pytest's base directory to mode 0700."""
    path = run_dir / f"makerun-{secrets.token_hex(4)}"
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)  # with an embedded cluster, its database too


@pytest.fixture(params=["own-broker+machine-postgres", "embedded"])
def make_run_env(request: pytest.FixtureRequest, dev_run_dir: Path) -> Iterator[tuple[dict[str, str], list[str]]]:
    """(environment for make run, secrets that must never be printed)."""
    env = {**clean_environment(), "WORKER_DEV_RUN_DIR": str(dev_run_dir), "FLOWER_PORT": str(free_port()),
           "API_PORT": str(free_port()),
           "ENV_FILE": "/nonexistent/.env", "CELERY_WORKER_HOSTNAME": f"makerun-{secrets.token_hex(3)}@%h"}
    if request.param == "embedded":
        env["WORKER_DEV_EMBEDDED"] = "1"
        yield env, []
        return
    if not port_open(LOCAL_HOST, 5432):
        pytest.skip("no PostgreSQL on 127.0.0.1:5432: make run would use the embedded one, as the other case does")
    password = secrets.token_urlsafe(16)
    base, redis = start_redis(dev_run_dir / "own-redis", extra=["--requirepass", password])
    # BROKER_URL alone: the result backend must be derived from it (same server, next database).
    env.update({"BROKER_URL": base.replace("redis://", f"redis://:{password}@") + "/0",
                "REDIS_KEY_PREFIX": f"twrun-{secrets.token_hex(3)}:"})
    yield env, [password]
    redis.terminate()
    redis.wait(10)


@pytest.mark.timeout(240)
def test_make_run_starts_worker_and_flower_and_another_shell_can_send_a_task(
        make_run_env: tuple[dict[str, str], list[str]], dev_run_dir: Path) -> None:
    env, never_printed = make_run_env
    tmp_path = dev_run_dir
    port = env["FLOWER_PORT"]
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "worker.dev.run"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    state_file = tmp_path / "dev-database.json"
    shutdown_from = 0
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (tmp_path / "health" / "ready").exists():
            assert proc.poll() is None, log.read_text()
            time.sleep(0.3)
        output = log.read_text()
        assert (tmp_path / "health" / "ready").exists(), output

        # No password in what make run prints: the broker's, the database roles'.
        for state in read_development_states(state_file).values():
            for role in ("owner_url", "runtime_url"):
                register_url(f"make run database {role}", state[role])
            never_printed += [make_url(state[k]).password for k in ("owner_url", "runtime_url")]
        assert never_printed and all(secret not in output for secret in never_printed), output

        if "BROKER_URL" in env:  # given alone: the results go to the same server, next database
            assert f"results:  {derive_result_backend(env['BROKER_URL']).replace(never_printed[0], '***')}\n" in output
        env_file = tmp_path / "env"
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
        assert all(f"\n{name}=" in env_file.read_text() for name in ("BROKER_URL", "CELERY_RESULT_BACKEND",
                                                                        "DATABASE_URL", "MIGRATION_DATABASE_URL"))

        auth = re.search(r"basic auth (\S+:\S+)\)", output).group(1)
        assert http_get(f"http://127.0.0.1:{port}/api/workers")[0] == 401
        assert http_get(f"http://127.0.0.1:{port}/api/workers", auth)[0] == 200
        assert "task events: ON" in output, "Flower runs: the worker must send task events from its start"

        # The printed command, as typed in a fresh shell in the checkout.
        org = re.search(UUID, output[output.index("demo data:"):]).group(0)
        send_line = next(line for line in output.splitlines() if "-m worker send" in line).strip()
        sent = subprocess.run(["bash", "-c", send_line.replace("<id>", org)], cwd=ROOT, env=clean_environment(),
                              capture_output=True, text=True, timeout=60)
        assert sent.returncode == 0, sent.stderr
        task_id = re.search(r"sent \S+ as (\S+)", sent.stdout).group(1)
        result = json.loads(sent.stdout.strip().splitlines()[-1])
        assert result["organization_id"] == org and result["count"] >= 1

        # The README's producer snippet, self-contained, in a shell that loaded the env file.
        snippet = readme_python_snippet("## Sending a task") + "\nprint(json.dumps(result.get(timeout=30)))\n"
        readme = subprocess.run(["bash", "-c", f'set -a; . {env_file}; set +a; exec "$0" -c "$1"', sys.executable,
                                 "import json\n" + snippet], cwd=ROOT, env=clean_environment(), capture_output=True,
                                text=True, timeout=60)
        assert readme.returncode == 0, readme.stderr
        assert json.loads(readme.stdout.strip().splitlines()[-1])["count"] >= 1, readme.stdout

        # The API beside the worker: the printed curl executes the demo configuration and follows its run to the end.
        api_env = tmp_path / "api.env"
        assert stat.S_IMODE(api_env.stat().st_mode) == 0o600
        token = re.search(r"^API_TOKEN=(\S+)$", api_env.read_text(), re.M).group(1)
        register_secret("make run API token", token)
        assert token not in output
        assert http_get(f"http://127.0.0.1:{env['API_PORT']}/healthz")[0] == 200
        curl_line = output.splitlines()[output.splitlines().index(
            "Execute the demo configuration through the API and follow its run:") + 1].strip()
        followed = subprocess.run(["bash", "-c", curl_line], cwd=ROOT, env=clean_environment(), capture_output=True,
                                  text=True, timeout=120)
        assert followed.returncode == 0, followed.stderr + followed.stdout
        launched = json.loads(followed.stdout.splitlines()[0])
        assert set(launched) == {"task_id", "test_run_id"}
        assert "event: progress" in followed.stdout or followed.stdout.count("event: end") == 1
        end = followed.stdout.split("event: end\ndata: ", 1)[1].splitlines()[0]
        assert json.loads(end)["status"] == "completed" and json.loads(end)["done"] == 4, followed.stdout

        # The very first task is in Flower (it only knows tasks from their events).
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            status, body = http_get(f"http://127.0.0.1:{port}/api/tasks", auth)
            if status == 200 and task_id in json.loads(body):
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"task {task_id} not in Flower's /api/tasks: {body[:500]!r}")
    finally:
        shutdown_from = len(log.read_bytes())
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        drop_development_databases(state_file)
    shutdown = log.read_bytes()[shutdown_from:].decode(errors="replace")
    assert proc.returncode == 0, log.read_text()[-3000:]
    # The worker stopped first, with its broker still there: no broker-lost retries, no tracebacks.
    assert "Connection to broker lost" not in shutdown and "Traceback" not in shutdown, shutdown[-5000:]
    assert "Warm shutdown" in shutdown, shutdown[-3000:]
    if env.get("WORKER_DEV_EMBEDDED"):
        broker_port = int(re.search(r"broker: +redis://127\.0\.0\.1:(\d+)/", log.read_text()).group(1))
        assert not port_open(LOCAL_HOST, broker_port), "embedded Redis still running"
        assert not (tmp_path / "pgdata" / "postmaster.pid").exists(), "embedded PostgreSQL still running"


@pytest.mark.parametrize(("settings", "message"), [
    ({"TASK_SOFT_TIME_LIMIT": "4000"}, "TASK_SOFT_TIME_LIMIT=4000 is not below TASK_TIME_LIMIT"),
    ({"REDIS_KEY_PREFIX": "no spaces"}, "REDIS_KEY_PREFIX"),
    ({"CELERY_RESULT_BACKEND": "redis://127.0.0.1:6379/1"}, "CELERY_RESULT_BACKEND is set but BROKER_URL is not"),
    ({"MIGRATION_DATABASE_URL": "postgresql://owner@127.0.0.1/x"}, "MIGRATION_DATABASE_URL is set but DATABASE_URL"),
    ({"BROKER_URL": "http://127.0.0.1/0"}, "BROKER_URL"),
])
@pytest.mark.timeout(120)
def test_make_run_refuses_bad_settings_before_starting_anything(settings: dict[str, str], message: str,
                                                                tmp_path: Path) -> None:
    env = {**clean_environment(), "WORKER_DEV_RUN_DIR": str(tmp_path / "run"), "WORKER_DEV_EMBEDDED": "1",
           "ENV_FILE": "/nonexistent/.env", "FLOWER_PORT": str(free_port()), **settings}
    proc = subprocess.Popen([sys.executable, "-m", "worker.dev.run"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            proc.communicate(timeout=60)
    assert proc.returncode == 64, stdout + stderr
    assert stderr.startswith("configuration error: ") and message in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr, stderr
    started = sorted(p.name for p in (tmp_path / "run").glob("*")) if (tmp_path / "run").exists() else []
    assert started == [], f"servers or databases were set up before the settings were checked: {started}"


@pytest.mark.parametrize(("broker", "backend"), [
    ("redis://:pw@127.0.0.1:6380/0", "redis://:pw@127.0.0.1:6380/1"),
    ("redis://u:p%40ss@redis.example:6379/4", "redis://u:p%40ss@redis.example:6379/5"),
    ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379/1"),
    ("rediss://:pw@h:6380/0?ssl_cert_reqs=required", "rediss://:pw@h:6380/1?ssl_cert_reqs=required"),
    ("redis://h:6379/15", "redis://h:6379/15"),
])
def test_result_backend_is_derived_from_the_broker(broker: str, backend: str) -> None:
    assert derive_result_backend(broker) == backend
