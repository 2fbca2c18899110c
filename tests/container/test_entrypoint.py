"""entrypoint.sh on the host, against the machine's Redis and PostgreSQL, with real worker and Flower processes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.container.conftest import SLEEP_TASKS, client_for, host_environment, run_entrypoint, wait_for
from tests.support.http import http_status
from worker.dev.services import free_port, start_redis

pytestmark = pytest.mark.timeout(240)


# -- settings reach the worker ---------------------------------------------------------------------------------
def test_every_worker_setting_reaches_the_running_worker(worker_env, start_entrypoint, tmp_path):
    extra = f"extra-{worker_env['REDIS_KEY_PREFIX'][6:14]}"
    env = {
        **worker_env,
        "CELERY_WORKER_CONCURRENCY": "3",
        "CELERY_WORKER_PREFETCH_MULTIPLIER": "5",
        "CELERY_WORKER_MAX_TASKS_PER_CHILD": "7",
        "CELERY_WORKER_MAX_MEMORY_PER_CHILD": "250000",
        "CELERY_WORKER_LOGLEVEL": "DEBUG",
        "CELERY_WORKER_QUEUES": f"celery,execution,{extra}",
        "CELERY_WORKER_POOL": "prefork",
        "CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT": "17",
        # Split like a shell line: the quoted queue name arrives as one word.
        "CELERY_WORKER_OPTS": f"--include {SLEEP_TASKS} --exclude-queues '{extra}' --without-gossip",
    }
    entry = start_entrypoint(env)
    entry.wait_ready()
    inspect = entry.client.control.inspect(destination=[entry.node], timeout=5)

    stats = inspect.stats()[entry.node]
    assert stats["pool"]["implementation"] == "celery.concurrency.prefork:TaskPool"
    assert stats["pool"]["max-concurrency"] == 3
    assert stats["pool"]["max-tasks-per-child"] == 7
    assert stats["prefetch_count"] == 3 * 5

    queues = {queue["name"] for queue in inspect.active_queues()[entry.node]}
    assert queues == {"celery", "execution"}, "CELERY_WORKER_QUEUES minus the queue excluded in CELERY_WORKER_OPTS"
    assert "tests.container.sleep" in inspect.registered()[entry.node]
    assert inspect.conf()[entry.node]["worker_soft_shutdown_timeout"] == 17.0

    # The entrypoint exec'd celery: same pid, and the memory bound is on its command line.
    cmdline = Path(f"/proc/{entry.proc.pid}/cmdline").read_bytes().split(b"\0")
    assert b"worker" in cmdline and b"--max-memory-per-child" in cmdline
    assert cmdline[cmdline.index(b"--max-memory-per-child") + 1] == b"250000"
    assert "DEBUG/MainProcess" in entry.log()


@pytest.mark.parametrize(("pool", "implementation", "concurrency"), [
    ("threads", "celery.concurrency.thread:TaskPool", 4),
    ("gevent", "celery.concurrency.gevent:TaskPool", 4),
    ("solo", "celery.concurrency.solo:TaskPool", 1),
])
def test_each_pool_runs_a_task(worker_env, start_entrypoint, pool, implementation, concurrency):
    entry = start_entrypoint({**worker_env, "CELERY_WORKER_POOL": pool, "CELERY_WORKER_CONCURRENCY": "4"})
    entry.wait_ready()
    stats = entry.client.control.inspect(destination=[entry.node], timeout=5).stats()[entry.node]
    assert stats["pool"]["implementation"] == implementation
    assert stats["pool"]["max-concurrency"] == concurrency
    result = entry.client.send_task("rhesis.backend.tasks.echo", args=[pool])
    assert result.get(timeout=30) == f"Message: {pool}, Organization: unknown, User: unknown"
    # The heartbeat and ready marker work with every pool (gevent runs the timers as greenlets).
    wait_for(lambda: healthcheck(worker_env, "--ready") == 0, 10, 0.5, "healthy and ready")
    heartbeat = Path(worker_env["WORKER_HEALTH_DIR"]) / "heartbeat"
    first = heartbeat.stat().st_mtime
    wait_for(lambda: heartbeat.stat().st_mtime > first, 5, 0.2, "a second beat")


# -- bad values ------------------------------------------------------------------------------------------------
BAD_VALUES = [
    ("CELERY_WORKER_CONCURRENCY", "0"),
    ("CELERY_WORKER_CONCURRENCY", "eight"),
    ("CELERY_WORKER_PREFETCH_MULTIPLIER", "-1"),
    ("CELERY_WORKER_MAX_TASKS_PER_CHILD", "1e3"),
    ("CELERY_WORKER_MAX_MEMORY_PER_CHILD", "512MB"),
    ("CELERY_WORKER_LOGLEVEL", "LOUD"),
    ("CELERY_WORKER_QUEUES", "celery,bad queue"),
    ("CELERY_WORKER_QUEUES", " , "),
    ("CELERY_WORKER_POOL", "eventlet"),
    ("CELERY_WORKER_HOSTNAME", "bad name/with spaces"),
    ("CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT", "-5"),
    ("CELERY_WORKER_OPTS", "--include 'unbalanced"),
    ("ENABLE_FLOWER", "maybe"),
    ("FLOWER_PORT", "70000"),
    ("WORKER_HEARTBEAT_INTERVAL", "0"),
]


FLOWER_BAD_VALUES = [
    ("FLOWER_PORT", "70000"),
    ("FLOWER_UNAUTHENTICATED", "perhaps"),
    ("CELERY_WORKER_CONCURRENCY", "0"),
    ("BROKER_URL", "http://127.0.0.1:6379/0"),
]
CASES = [("worker", n, v) for n, v in BAD_VALUES] + [("flower", n, v) for n, v in FLOWER_BAD_VALUES]


@pytest.mark.parametrize(("command", "name", "value"), CASES, ids=[f"{c}-{n}={v}" for c, n, v in CASES])
def test_bad_value_exits_64_with_one_line(worker_env, command, name, value):
    env = {**worker_env, "ENABLE_FLOWER": "yes", "FLOWER_BASIC_AUTH": "admin:pw", name: value}
    started = time.monotonic()
    done = run_entrypoint(env, command, timeout=20)
    assert done.returncode == 64, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert name in lines[0] and "allowed:" in lines[0]
    assert done.stdout == ""
    assert "entrypoint: starting" not in done.stderr
    assert time.monotonic() - started < 20


def test_worker_takes_no_stray_arguments(worker_env):
    done = run_entrypoint(worker_env, "worker", "--concurrency", "3")
    assert done.returncode == 64
    assert "CELERY_WORKER_OPTS" in done.stderr


def test_other_commands_run_as_given(worker_env, start_entrypoint):
    done = run_entrypoint(worker_env, "sh", "-c", 'echo "$0:$1"', "a b", "c")
    assert (done.returncode, done.stdout) == (0, "a b:c\n")
    entry = start_entrypoint(worker_env)
    entry.wait_ready()
    done = run_entrypoint({**worker_env, "CELERY_APP": "worker.app"}, "celery", "inspect", "ping",
                          "--destination", entry.node)
    assert done.returncode == 0, done.stderr
    assert entry.node in done.stdout and "pong" in done.stdout


def test_startup_log_masks_secrets(worker_env, start_entrypoint, container_db):
    password = container_db.runtime_url.split(":")[2].split("@")[0]
    assert len(password) > 8
    entry = start_entrypoint({**worker_env, "ENABLE_FLOWER": "yes", "FLOWER_PORT": str(free_port()),
                              "FLOWER_BASIC_AUTH": "admin:flower-secret-1234"})
    entry.wait_ready()
    log = entry.log()
    assert "entrypoint: setting DATABASE_URL=postgresql://" in log
    assert ":***@" in log
    assert password not in log
    assert "flower-secret-1234" not in log
    assert "FLOWER_BASIC_AUTH=(set)" in log


# -- Flower ----------------------------------------------------------------------------------------------------
def wait_for_flower(port: int, entry) -> None:  # type: ignore[no-untyped-def]
    def answers() -> bool:
        assert entry.proc.poll() is None, entry.log()[-4000:]
        return http_status(f"http://127.0.0.1:{port}/healthcheck") == 200

    wait_for(answers, 60, 0.3, "Flower's /healthcheck")


@pytest.mark.parametrize("command", ["worker", "flower"])
def test_flower_refuses_to_start_without_authentication(worker_env, command):
    done = run_entrypoint({**worker_env, "ENABLE_FLOWER": "yes", "FLOWER_PORT": str(free_port())}, command)
    assert done.returncode == 64
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "FLOWER_BASIC_AUTH" in lines[0] and "FLOWER_UNAUTHENTICATED=yes" in lines[0]


def test_api_refuses_to_start_without_a_token_secret(worker_env):
    done = run_entrypoint({**worker_env, "API_PORT": str(free_port())}, "api")
    assert done.returncode == 64, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("configuration error: API_TOKEN_SECRET is empty"), done.stderr


def test_api_serves_behind_tokens_is_healthy_and_stops_on_sigterm(worker_env, start_entrypoint):
    import secrets as random

    from tests.support.api_client import ApiClient
    from tests.support.secret_watch import register_secret

    key = random.token_hex(32)
    register_secret("API_TOKEN_SECRET of the entrypoint test", key)
    port = free_port()
    entry = start_entrypoint({**worker_env, "API_TOKEN_SECRET": key, "API_PORT": str(port)}, "api")
    wait_for(lambda: entry.proc.poll() is None and http_status(f"http://127.0.0.1:{port}/healthz") == 200, 60, 0.3,
             "the API's /healthz")
    answer = ApiClient(f"http://127.0.0.1:{port}").get("/test_runs/00000000-0000-0000-0000-000000000000")
    assert answer.status == 401 and answer.json()["error"]["code"] == "unauthorized"
    healthy = run_entrypoint({**worker_env, "API_PORT": "1"}, "healthcheck")  # the port it really listens on wins
    assert (healthy.returncode, healthy.stdout.strip()) == (0, f"healthy: the API answers on port {port}")
    entry.signal(signal.SIGTERM)
    assert entry.wait(30) == 0, entry.log()[-3000:]
    log = entry.log()
    assert "setting API_TOKEN_SECRET=(set)" in log and key not in log
    assert "Traceback" not in log and "Finished server process" in log


def test_flower_beside_the_worker_answers_401_without_and_200_with_credentials(worker_env, start_entrypoint):
    port = free_port()
    entry = start_entrypoint({**worker_env, "ENABLE_FLOWER": "true", "FLOWER_PORT": str(port),
                              "FLOWER_BASIC_AUTH": "admin:s3cret"})
    entry.wait_ready()
    wait_for_flower(port, entry)
    for path in ("/", "/api/workers"):
        assert http_status(f"http://127.0.0.1:{port}{path}") == 401
        assert http_status(f"http://127.0.0.1:{port}{path}", ("admin", "wrong")) == 401
        assert http_status(f"http://127.0.0.1:{port}{path}", ("admin", "s3cret")) == 200
    worker_pid, flower_pid = entry.supervised_pids()
    entry.signal(signal.SIGTERM)
    assert entry.wait(60) == 0
    for pid in (worker_pid, flower_pid):
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_flower_alone_reads_credentials_from_a_file(worker_env, start_entrypoint, tmp_path):
    secret = tmp_path / "flower-auth"
    secret.write_text("ops:from-a-file\n")
    port = free_port()
    entry = start_entrypoint({**worker_env, "FLOWER_PORT": str(port), "FLOWER_BASIC_AUTH_FILE": str(secret)},
                             "flower")
    wait_for_flower(port, entry)
    assert http_status(f"http://127.0.0.1:{port}/") == 401
    assert http_status(f"http://127.0.0.1:{port}/", ("ops", "from-a-file")) == 200
    # The chart's Flower container: its healthcheck asks Flower, not the worker heartbeat.
    done = run_entrypoint({**worker_env, "FLOWER_PORT": str(port)}, "healthcheck")
    assert done.returncode == 0, done.stdout


def test_flower_unauthenticated_only_on_purpose_and_says_so(worker_env, start_entrypoint):
    port = free_port()
    entry = start_entrypoint({**worker_env, "FLOWER_PORT": str(port), "FLOWER_UNAUTHENTICATED": "yes"}, "flower")
    wait_for_flower(port, entry)
    assert http_status(f"http://127.0.0.1:{port}/") == 200
    assert "Flower runs WITHOUT authentication" in entry.log()


def test_killing_flower_stops_the_worker_and_the_entrypoint(worker_env, start_entrypoint):
    port = free_port()
    entry = start_entrypoint({**worker_env, "ENABLE_FLOWER": "1", "FLOWER_PORT": str(port),
                              "FLOWER_BASIC_AUTH": "admin:pw"})
    entry.wait_ready()
    worker_pid, flower_pid = entry.supervised_pids()
    wait_for_flower(port, entry)
    subprocess.run(["kill", "-KILL", str(flower_pid)], check=True)
    assert entry.wait(60) == 128 + signal.SIGKILL
    assert not Path(f"/proc/{worker_pid}").exists()
    assert "Flower exited with status 137; stopping worker" in entry.log()


# -- shutdown --------------------------------------------------------------------------------------------------
def test_sigterm_lets_the_running_task_finish_and_returns_prefetched_ones(worker_env, start_entrypoint, tmp_path):
    env = {**worker_env, "CELERY_WORKER_CONCURRENCY": "1", "CELERY_WORKER_PREFETCH_MULTIPLIER": "4",
           "CELERY_WORKER_OPTS": f"--include {SLEEP_TASKS}"}
    entry = start_entrypoint(env)
    entry.wait_ready()
    marker = tmp_path / "started"
    running = entry.client.send_task("tests.container.sleep", args=[4, str(marker)])
    waiting = [entry.client.send_task("rhesis.backend.tasks.echo", args=[f"queued-{i}"]) for i in range(3)]
    wait_for(marker.exists, 30, what="the long task to start")
    inspect = entry.client.control.inspect(destination=[entry.node], timeout=5)
    wait_for(lambda: len((inspect.reserved() or {}).get(entry.node, [])) == 3, 15, what="3 prefetched messages")

    entry.signal(signal.SIGTERM)
    assert entry.wait(60) == 0
    assert running.get(timeout=5) == "slept 4"
    assert "Warm shutdown" in entry.log()
    assert all(result.state == "PENDING" for result in waiting), "prefetched tasks must not run during shutdown"

    # Nothing was lost: the prefetched messages went back to the queue and another worker runs them.
    token = worker_env["REDIS_KEY_PREFIX"][6:14]
    second = start_entrypoint({**env, "CELERY_WORKER_HOSTNAME": f"ctr-{token}-second@localhost"})
    second.wait_ready()
    assert [result.get(timeout=30) for result in waiting] == [
        f"Message: queued-{i}, Organization: unknown, User: unknown" for i in range(3)]


def test_warm_shutdown_is_bounded_by_the_soft_shutdown_timeout(worker_env, start_entrypoint, tmp_path):
    env = {**worker_env, "CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT": "3", "CELERY_WORKER_OPTS": f"--include {SLEEP_TASKS}"}
    entry = start_entrypoint(env)
    entry.wait_ready()
    marker = tmp_path / "started"
    entry.client.send_task("tests.container.sleep", args=[120, str(marker)])
    wait_for(marker.exists, 30, what="the long task to start")
    started = time.monotonic()
    entry.signal(signal.SIGTERM)
    status = entry.wait(45)
    elapsed = time.monotonic() - started
    assert status != 0, "a task cut short by the bound is a failed shutdown"
    assert 3 <= elapsed < 30
    assert "cold shutdown" in entry.log()


def test_drain_stops_consuming_and_waits_for_running_tasks(worker_env, start_entrypoint, tmp_path):
    env = {**worker_env, "CELERY_WORKER_OPTS": f"--include {SLEEP_TASKS}", "CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT": "30"}
    entry = start_entrypoint(env)
    entry.wait_ready()
    health = Path(env["WORKER_HEALTH_DIR"])
    wait_for((health / "ready").exists, 10, what="the ready marker")
    marker = tmp_path / "started"
    running = entry.client.send_task("tests.container.sleep", args=[3, str(marker)])
    wait_for(marker.exists, 30, what="the task to start")

    started = time.monotonic()
    done = run_entrypoint(env, "drain")
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started >= 1.5, "drain returned before the running task finished"
    assert running.state == "SUCCESS"
    assert "runs no task" in done.stderr
    inspect = entry.client.control.inspect(destination=[entry.node], timeout=5)
    assert inspect.active_queues()[entry.node] == []
    assert not (health / "ready").exists()
    assert run_entrypoint(env, "healthcheck").returncode == 0, "a drained worker is still alive"
    assert run_entrypoint(env, "healthcheck", "--ready").returncode == 1, "a drained worker is not ready"
    late = entry.client.send_task("rhesis.backend.tasks.echo", args=["late"])
    time.sleep(2)
    assert late.state == "PENDING"
    entry.signal(signal.SIGTERM)
    assert entry.wait(30) == 0


# -- health ----------------------------------------------------------------------------------------------------
def healthcheck(env: dict[str, str], *args: str) -> int:
    return run_entrypoint(env, "healthcheck", *args, timeout=10).returncode


def test_healthcheck_follows_a_stopped_and_continued_worker(worker_env, start_entrypoint):
    entry = start_entrypoint(worker_env)
    entry.wait_ready()
    wait_for(lambda: healthcheck(worker_env, "--ready") == 0, 10, what="healthy and ready")
    entry.proc.send_signal(signal.SIGSTOP)  # the celery main process (exec'd by the entrypoint)
    try:
        started = time.monotonic()
        wait_for(lambda: healthcheck(worker_env) == 1, 15, 0.5, "unhealthy while stopped")
        assert time.monotonic() - started >= 2, "max age is 4s: it must not turn unhealthy at once"
    finally:
        entry.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: healthcheck(worker_env) == 0, 15, 0.5, "healthy again after SIGCONT")
    entry.signal(signal.SIGTERM)
    assert entry.wait(30) == 0


def test_healthcheck_is_cheap(worker_env, start_entrypoint):
    """No Celery, no broker: it answers in well under a second even with the broker unreachable."""
    entry = start_entrypoint(worker_env)
    entry.wait_ready()
    env = host_environment({**worker_env, "BROKER_URL": "redis://192.0.2.1:1/0"})
    started = time.monotonic()
    done = subprocess.run([str(Path(__file__).resolve().parents[2] / "entrypoint.sh"), "healthcheck"],
                          env=env, capture_output=True, text=True, timeout=10, check=False)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    assert elapsed < 1.0
    assert done.stdout.startswith("healthy")
    # What it loads: the stdlib, config's declarations and the health files; never Celery, kombu or the app.
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "worker", "healthcheck"], env=env,
                          capture_output=True, text=True, timeout=10, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    loaded = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in done.stderr.splitlines()}
    assert loaded.isdisjoint({"celery", "kombu", "redis", "sqlalchemy", "billiard"}), sorted(loaded)
    assert "worker.app" not in done.stderr


def test_broker_loss_is_survived_briefly_then_bounded(worker_env, start_entrypoint, tmp_path):
    redis_url, redis_proc = start_redis(tmp_path / "redis")
    port = int(redis_url.rsplit(":", 1)[1])
    env = {**worker_env, "BROKER_URL": f"{redis_url}/0", "CELERY_RESULT_BACKEND": f"{redis_url}/1",
           "WORKER_BROKER_LOST_EXIT_AFTER": "8"}
    entry = start_entrypoint(env)
    entry.wait_ready()
    wait_for(lambda: healthcheck(env, "--ready") == 0, 10, what="healthy and ready")

    # A short outage: not ready, still alive; consuming again once the broker is back.
    redis_proc.terminate()
    redis_proc.wait(10)
    wait_for(lambda: healthcheck(env, "--ready") == 1, 10, 0.3, "not ready without a broker")
    time.sleep(2)
    assert healthcheck(env) == 0, "a short broker outage must not make the worker unhealthy"
    _, redis_proc = start_redis(tmp_path / "redis", port=port)
    wait_for(lambda: healthcheck(env, "--ready") == 0, 30, 0.5, "ready again after the broker came back")
    client = client_for(env, "broker-loss-client")
    try:
        assert client.send_task("rhesis.backend.tasks.echo", args=["back"]).get(timeout=30).startswith("Message: back")
    finally:
        client.close()
    assert entry.proc.poll() is None

    # A long outage: the worker gives up after WORKER_BROKER_LOST_EXIT_AFTER and exits non-zero.
    redis_proc.terminate()
    redis_proc.wait(10)
    lost = time.monotonic()
    status = entry.wait(60)
    assert status == 1
    assert 8 <= time.monotonic() - lost < 40
    assert healthcheck(env) == 1
    assert "WORKER_BROKER_LOST_EXIT_AFTER" in entry.log()


# -- migrate ---------------------------------------------------------------------------------------------------
def test_migrate_subcommand_creates_the_schema(worker_env, container_db):
    from sqlalchemy import create_engine, text

    done = run_entrypoint(worker_env, "migrate", timeout=120)
    assert done.returncode == 0, done.stderr
    assert container_db.owner_url.split(":")[2].split("@")[0] not in done.stderr + done.stdout
    engine = create_engine(container_db.owner_url)
    try:
        with engine.connect() as conn:
            tables = conn.scalar(text("select count(*) from information_schema.tables where table_schema = 'public'"))
    finally:
        engine.dispose()
    assert tables and tables > 0
