"""`python -m worker send`: every expected failure is one line on stderr and a non-zero status, never a traceback."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import pytest
import redis

from tests.conftest import ROOT
from worker.dev.services import free_port

ORG = "4b60f629-cc9a-519b-8340-d03f6737cd74"


def run_send(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full_env = {**{k: v for k, v in os.environ.items() if not k.startswith(("BROKER_URL", "CELERY_", "REDIS_"))},
                "ENV_FILE": "/nonexistent/.env", **env}
    return subprocess.run([sys.executable, "-m", "worker", "send", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line(result: subprocess.CompletedProcess[str], status: int, *words: str) -> None:
    assert result.returncode == status, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert all(word in result.stderr for word in words), result.stderr


@pytest.mark.parametrize(("args", "words"), [
    (["--organization-id", "not-a-uuid"], ["--organization-id 'not-a-uuid' is not a valid UUID"]),
    (["--organization-id", ORG, "--user-id", "42"], ["--user-id '42' is not a valid UUID"]),
    (["--user-id", ORG], ["--user-id needs --organization-id"]),
])
def test_bad_tenant_ids_are_usage_errors(args: list[str], words: list[str]) -> None:
    # Checked before connecting: nothing listens on this broker.
    port = free_port()
    result = run_send("rhesis.backend.tasks.echo", "hi", *args,
                      env={"BROKER_URL": f"redis://127.0.0.1:{port}/0",
                           "CELERY_RESULT_BACKEND": f"redis://127.0.0.1:{port}/1"})
    assert_one_line(result, 64, *words)


def test_unreachable_broker_is_one_line() -> None:
    port = free_port()
    result = run_send("rhesis.backend.tasks.echo", "hi", env={"BROKER_URL": f"redis://:secret-pw@127.0.0.1:{port}/0",
                                                              "CELERY_RESULT_BACKEND": f"redis://127.0.0.1:{port}/1"},
                      timeout=30)
    assert_one_line(result, 1, "broker unavailable", str(port))
    assert "secret-pw" not in result.stderr


def test_no_result_within_the_timeout_is_one_line(redis_base: str) -> None:
    prefix = f"twsend-{secrets.token_hex(3)}:"  # no worker consumes here
    try:
        result = run_send("rhesis.backend.tasks.echo", "hi", "--timeout", "1",
                          env={"BROKER_URL": f"{redis_base}/0", "CELERY_RESULT_BACKEND": f"{redis_base}/1",
                               "REDIS_KEY_PREFIX": prefix})
        assert_one_line(result, 124, "no result", "within 1s")
    finally:
        for db in (0, 1):
            client = redis.Redis.from_url(f"{redis_base}/{db}")
            keys = list(client.scan_iter(f"{prefix}*"))
            if keys:
                client.delete(*keys)
            client.close()


@pytest.mark.timeout(180)
def test_a_task_that_raised_is_one_line(session_env: dict[str, str], worker_factory) -> None:  # type: ignore[no-untyped-def]
    worker_factory()
    # count_test_sets needs an organization: the worker's task raises TenantContextError.
    result = run_send("rhesis.backend.tasks.count_test_sets", env=session_env)
    assert_one_line(result, 1, "FAILURE", "TenantContextError", "needs an organization_id")
    assert result.stdout.startswith("sent rhesis.backend.tasks.count_test_sets as ")
    ok = run_send("rhesis.backend.tasks.count_test_sets", "--organization-id", ORG, env=session_env)
    assert ok.returncode == 0, ok.stderr
