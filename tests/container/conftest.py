"""Fixtures for the entrypoint (run on the host) and the image (built and run with docker or podman).

Every worker started here gets its own Redis key prefix, Redis database number and node name, so parallel
test runs never take each other's messages.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import register_database
from worker.dev.provision import ProvisionedDatabase, drop_database, provision_database

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "entrypoint.sh"
VENV_BIN = ROOT / ".venv" / "bin"
SLEEP_TASKS = "tests.container.sleepy_tasks"


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.2, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def container_db(pg_admin_url: str) -> Iterator[ProvisionedDatabase]:
    """A database with an owner and a runtime role (migrated by the test that needs it)."""
    db = provision_database(pg_admin_url, prefix="twctr")
    register_database(db)
    yield db
    drop_database(pg_admin_url, db)


@pytest.fixture(scope="session")
def redis_db_number() -> int:
    return secrets.randbelow(14) + 2  # 2..15: databases 0 and 1 are the defaults everyone else uses


@pytest.fixture()
def worker_env(redis_base: str, redis_db_number: int, container_db: ProvisionedDatabase, tmp_path: Path) -> dict:
    """Environment for one entrypoint run: own key prefix, node name and health directory."""
    token = secrets.token_hex(4)
    return {
        "BROKER_URL": f"{redis_base}/{redis_db_number}",
        "CELERY_RESULT_BACKEND": f"{redis_base}/{redis_db_number}",
        "DATABASE_URL": container_db.runtime_url,
        "MIGRATION_DATABASE_URL": container_db.owner_url,
        "REDIS_KEY_PREFIX": f"twctr-{token}:",
        "CELERY_WORKER_HOSTNAME": f"ctr-{token}@localhost",
        "CELERY_WORKER_CONCURRENCY": "2",
        "WORKER_HEALTH_DIR": str(tmp_path / "health"),
        "WORKER_HEARTBEAT_INTERVAL": "1",
        "WORKER_HEARTBEAT_MAX_AGE": "4",
        "ENV_FILE": "/nonexistent/.env",
    }


def host_environment(env: dict[str, str]) -> dict[str, str]:
    """The test process's environment without any product variable, plus ``env``; .venv/bin first on PATH."""
    from config.options import OPTIONS

    declared = {option.name for option in OPTIONS} | {f"{option.name}_FILE" for option in OPTIONS}
    base = {k: v for k, v in os.environ.items() if k not in declared and not k.startswith(("FLOWER_", "CELERY_"))}
    return {**base, "PATH": f"{VENV_BIN}{os.pathsep}{base.get('PATH', '/usr/bin:/bin')}", "PYTHONPATH": str(ROOT),
            **env}


def client_for(env: dict[str, str], name: str = "container-test-client"):  # type: ignore[no-untyped-def]
    """A producer/inspector app configured exactly like the worker started with ``env``."""
    from config import load_settings
    from worker.app import create_app

    return create_app(load_settings(environ=env), main=name)


@dataclass
class Entrypoint:
    """``entrypoint.sh`` running on the host as a real process."""

    args: tuple[str, ...]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen
    _client: Any = field(default=None, repr=False)

    @property
    def node(self) -> str:
        return self.env["CELERY_WORKER_HOSTNAME"]

    @property
    def client(self):  # type: ignore[no-untyped-def]
        if self._client is None:
            self._client = client_for(self.env)
        return self._client

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def ping(self) -> bool:
        return bool(self.client.control.ping(destination=[self.node], timeout=0.5))

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"entrypoint exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            if self.ping():
                return
            time.sleep(0.3)
        raise AssertionError(f"worker {self.node} did not answer a ping within {timeout}s:\n{self.log()[-4000:]}")

    def supervised_pids(self) -> tuple[int, int]:
        match = wait_for(lambda: re.search(r"supervising the worker \(pid (\d+)\) and Flower \(pid (\d+)\)",
                                           self.log()), 30, what="the supervisor's start line")
        return int(match.group(1)), int(match.group(2))

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"entrypoint still running after {timeout}s:\n{self.log()[-4000:]}") from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._client is not None:
            self._client.close()


def run_entrypoint(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``entrypoint.sh args`` to completion (for commands that end by themselves).

    It runs in its own process group, killed whole on a timeout, so that nothing it started outlives the test.
    """
    proc = subprocess.Popen([str(ENTRYPOINT), *args], cwd=ROOT, env=host_environment(env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        command = " ".join(args)
        raise AssertionError(f"entrypoint.sh {command} still running after {timeout}s:\n{stderr[-4000:]}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.fixture()
def start_entrypoint(tmp_path: Path) -> Iterator[Callable[..., Entrypoint]]:
    started: list[Entrypoint] = []

    def start(env: dict[str, str], *args: str) -> Entrypoint:
        log_path = tmp_path / f"entrypoint-{len(started)}.log"
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen([str(ENTRYPOINT), *args], cwd=ROOT, env=host_environment(env),
                                    stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        entry = Entrypoint(args, env, log_path, proc)
        started.append(entry)
        return entry

    yield start
    for entry in started:
        entry.stop()
        # Nothing of a test may outlive it: kill what is left of its process group.
        try:
            os.killpg(entry.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
