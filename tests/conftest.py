"""Shared fixtures: real Redis and PostgreSQL (the machine's, else embedded), real worker processes."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from worker.dev.provision import ProvisionedDatabase, drop_database, provision_database
from worker.dev.services import postgres_admin_url, redis_base_url

# A plugin of this conftest (pytest_plugins below) that the conftest also imports: rewrite it before the import.
pytest.register_assert_rewrite("tests.support.secret_watch")
from tests.support.processes import LoggedProcess  # noqa: E402
from tests.support.secret_watch import register_environment, register_output_file, register_url  # noqa: E402

# The leak check: its hooks watch every subprocess and make the session fail on a leaked secret.
pytest_plugins = ("tests.support.secret_watch",)

ROOT = Path(__file__).resolve().parents[1]
RUN_DIR = ROOT / ".run" / "test"
IMAGE = "localhost/tenant-worker:dev"


@pytest.fixture(scope="session")
def run_dir() -> Path:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    return RUN_DIR


@pytest.fixture(scope="session")
def redis_base(run_dir: Path) -> str:
    return redis_base_url(run_dir)


@pytest.fixture(scope="session")
def pg_admin_url(run_dir: Path) -> str:
    return postgres_admin_url(run_dir)


@pytest.fixture(scope="session")
def migrated_database(pg_admin_url: str) -> Iterator[ProvisionedDatabase]:
    """A fresh database with the schema, an owner role and a runtime role; dropped afterwards."""
    from worker.db.migrate import migrate

    db = provision_database(pg_admin_url, prefix="twtest")
    register_database(db)
    migrate(db.owner_url, db.runtime_url)
    yield db
    from worker.db.engine import reset_engines

    reset_engines()
    drop_database(pg_admin_url, db)


def register_database(db: ProvisionedDatabase) -> None:
    """The roles' password (and the admin's, if any) must never reach any output of the suite."""
    for label, url in (("owner", db.owner_url), ("runtime", db.runtime_url), ("admin", db.admin_url)):
        register_url(f"database {db.name} {label} role", url)


@pytest.fixture(scope="module")
def broker(session_env: dict[str, str]) -> Iterator[redis.Redis]:
    """A plain client of the session's broker Redis (modules that start private servers define their own)."""
    client = redis.Redis.from_url(session_env["BROKER_URL"])
    yield client
    client.close()


def base_environment(redis_base: str, db: ProvisionedDatabase, key_prefix: str) -> dict[str, str]:
    """Environment for a worker or client of this test session (no stray .env is read)."""
    return {
        "BROKER_URL": f"{redis_base}/0",
        "CELERY_RESULT_BACKEND": f"{redis_base}/1",
        "DATABASE_URL": db.runtime_url,
        "MIGRATION_DATABASE_URL": db.owner_url,
        "REDIS_KEY_PREFIX": key_prefix,
        "ENV_FILE": "/nonexistent/.env",
    }


@pytest.fixture(scope="session")
def session_env(redis_base: str, migrated_database: ProvisionedDatabase) -> dict[str, str]:
    return base_environment(redis_base, migrated_database, f"twtest-{secrets.token_hex(4)}:")


@dataclass
class WorkerProcess(LoggedProcess):
    node: str
    proc: subprocess.Popen
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)


def start_worker_process(env: dict[str, str], run_dir: Path, pool: str = "prefork", concurrency: int = 2,
                         app: str = "tests.support.worker_app", extra_args: tuple[str, ...] = (),
                         ping_app=None, timeout: float = 60) -> WorkerProcess:  # type: ignore[no-untyped-def]
    node = f"test-{pool}-{secrets.token_hex(3)}@localhost"
    args = [sys.executable, "-m", "celery", "-A", app, "worker", "--pool", pool, "--concurrency", str(concurrency),
            "--queues", "celery,execution", "--hostname", node, "--loglevel", "INFO", "--without-gossip",
            "--without-mingle", *extra_args]
    worker = spawn_worker_process(args, node, env, run_dir)
    wait_until_ready(worker, ping_app, timeout)
    return worker


def spawn_worker_process(args: list[str], node: str, env: dict[str, str], run_dir: Path) -> WorkerProcess:
    """Start ``args`` (a worker command line whose node name is ``node``) with its output in a log file, without
    waiting for it (the benchmarks time a worker from its spawn)."""
    log_path = run_dir / f"{node}.log"
    full_env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    register_environment(full_env, f"worker {node}")
    register_output_file(log_path, f"worker {node}")
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(args, cwd=ROOT, env=full_env, stdout=log_file, stderr=subprocess.STDOUT)
    return WorkerProcess(node, proc, log_path, env)


def wait_until_ready(worker: WorkerProcess, ping_app=None, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    """Until the worker answers a ping (with ``ping_app``) or logs "ready."; stopped and RuntimeError otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.proc.poll() is not None:
            raise RuntimeError(f"worker exited with {worker.proc.returncode}:\n{worker.log()[-4000:]}")
        if ping_app is not None and ping_app.control.ping(destination=[worker.node], timeout=0.5):
            return
        if ping_app is None and "ready." in worker.log():
            return
        time.sleep(0.2)
    worker.stop()
    raise RuntimeError(f"worker did not become ready in {timeout}s:\n{worker.log()[-4000:]}")


@pytest.fixture(scope="session")
def client_app(session_env: dict[str, str]):  # type: ignore[no-untyped-def]
    """A producer app configured like the workers of this session."""
    from config import load_settings
    from tests.support import probe_tasks  # noqa: F401 - probe task names for the client
    from worker.app import create_app

    app = create_app(load_settings(environ=session_env), main="test-client")
    app.set_current()
    yield app
    app.close()


@pytest.fixture(scope="module")
def worker_factory(session_env: dict[str, str], run_dir: Path, client_app) -> Iterator[Callable[..., WorkerProcess]]:  # type: ignore[no-untyped-def]
    started: list[WorkerProcess] = []

    def start(pool: str = "prefork", concurrency: int = 2, env: dict[str, str] | None = None,
              extra_args: tuple[str, ...] = ()) -> WorkerProcess:
        worker = start_worker_process({**session_env, **(env or {})}, run_dir, pool, concurrency,
                                      extra_args=extra_args, ping_app=client_app)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


# -- the container image (built once per session; used by tests/container and the chart e2e) -----------

def detect_engine() -> list[str] | None:
    """The command prefix of a usable container engine, or None."""
    if shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True, check=False,
                                                 timeout=30).returncode == 0:
        return ["docker"]
    if shutil.which("podman"):
        # crun fails on some cgroup layouts (ours); runc works wherever podman does.
        return ["podman", "--runtime", "runc"] if shutil.which("runc") else ["podman"]
    return None


@pytest.fixture(scope="session")
def engine() -> list[str]:
    found = detect_engine()
    if found is None:
        pytest.skip("neither a docker daemon nor podman is available to build the image "
                    "(CI installs podman: apt-get install podman runc uidmap debootstrap)")
    return found


@pytest.fixture(scope="session")
def image(engine: list[str], tmp_path_factory: pytest.TempPathFactory) -> str:
    """Build the image once per session with scripts/build-image.sh (layers cached between sessions)."""
    log = tmp_path_factory.mktemp("image") / "build.log"
    env = {**os.environ, "IMAGE": IMAGE, "CONTAINER_ENGINE": engine[0]}
    started = time.monotonic()
    with log.open("wb") as out:
        done = subprocess.run([str(ROOT / "scripts" / "build-image.sh")], cwd=ROOT, env=env, stdout=out,
                              stderr=subprocess.STDOUT, timeout=1500, check=False)
    if done.returncode != 0:
        pytest.fail(f"image build failed ({done.returncode}):\n{log.read_text(errors='replace')[-6000:]}")
    print(f"image {IMAGE} built in {time.monotonic() - started:.0f}s")
    return IMAGE
