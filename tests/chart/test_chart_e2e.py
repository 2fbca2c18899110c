"""End to end: the rendered worker Deployment runs under `podman kube play` and completes a task.

Needs podman and the image localhost/tenant-worker:dev (`make image`); skips with the reason otherwise. The pod
uses host networking, so it reaches the machine's Redis on 127.0.0.1:6379 (under a random key prefix, so runs
never meet); CHART_E2E_BROKER_URL, CHART_E2E_RESULT_BACKEND and CHART_E2E_DATABASE_URL point it elsewhere.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

pytestmark = pytest.mark.container
PLAYABLE = {"ConfigMap", "Deployment"}  # what podman kube play runs here; the rest is cluster machinery


def _podman(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", "--runtime", "runc", *args], capture_output=True, text=True, timeout=timeout,
                          check=False)


@pytest.fixture(scope="module")
def podman_image(engine: list[str], image: str) -> str:
    """The image built in this test session (tests/conftest.py); `podman kube play` needs podman itself."""
    if engine[0] != "podman":
        pytest.skip("podman kube play needs podman; the image was built with " + engine[0])
    return image


def _connection_env() -> dict[str, str]:
    """Connection settings for the pod: CHART_E2E_* or the machine's Redis and PostgreSQL on 127.0.0.1."""
    prefix = f"charte2e-{secrets.token_hex(4)}:"  # isolates this run's queues and results in a shared Redis
    env = {
        "BROKER_URL": os.environ.get("CHART_E2E_BROKER_URL", "redis://127.0.0.1:6379/0"),
        "CELERY_RESULT_BACKEND": os.environ.get("CHART_E2E_RESULT_BACKEND", "redis://127.0.0.1:6379/1"),
        # the echo task does not touch the database; the worker only needs a well-formed URL
        "DATABASE_URL": os.environ.get("CHART_E2E_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        "REDIS_KEY_PREFIX": prefix,
    }
    for name in ("BROKER_URL", "CELERY_RESULT_BACKEND"):
        parts = urlsplit(env[name])
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            pytest.skip(f"{name} must be a TCP Redis URL the pod can reach over the host network")
        try:
            socket.create_connection((parts.hostname, parts.port or 6379), timeout=2).close()
        except OSError as exc:
            pytest.skip(f"no Redis at {parts.hostname}:{parts.port or 6379} ({exc}); start it (NOTES.md section 1) "
                        "or set CHART_E2E_BROKER_URL and CHART_E2E_RESULT_BACKEND")
    return env


def test_worker_deployment_runs_under_podman_and_completes_a_task(
        podman_image: str, render: Any, tmp_path: Path) -> None:
    env = _connection_env()
    node = f"e2e{secrets.token_hex(3)}"
    repository, tag = podman_image.rsplit(":", 1)
    values = {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "fullnameOverride": f"tw-{node}",
        "hostNetwork": True,
        "migration": {"enabled": False},
        "serviceAccount": {"create": False},
        "secret": {"brokerUrl": env["BROKER_URL"], "resultBackend": env["CELERY_RESULT_BACKEND"],
                   "databaseUrl": env["DATABASE_URL"]},
        "config": {"redisKeyPrefix": env["REDIS_KEY_PREFIX"], "logLevel": "DEBUG"},
        "redisTls": {"certReqs": "required"},
        "workers": [{"name": "e2e", "concurrency": 1, "hostname": f"{node}@%h", "softShutdownTimeout": 10,
                     "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
                     "podDisruptionBudget": {"enabled": False}}],
    }
    rendered = render(values)
    objects = [o for o in rendered.objects if o["kind"] in PLAYABLE]
    assert {o["kind"] for o in objects} == PLAYABLE
    kube_file = tmp_path / "kube.yaml"
    kube_file.write_text(yaml.safe_dump_all(objects, sort_keys=False))
    # podman 4.3 stores a kube-played Secret as YAML but reads secretKeyRef as a JSON map of base64 values, so the
    # chart's Secret is handed over as a podman secret holding its `data` in JSON.
    secrets_created = []
    for secret in rendered.all("Secret"):
        name = secret["metadata"]["name"]
        secret_file = tmp_path / f"{name}.json"
        secret_file.write_text(json.dumps(secret.get("data") or {}))
        _podman("secret", "rm", name, timeout=60)
        created = _podman("secret", "create", name, str(secret_file), timeout=60)
        assert created.returncode == 0, created.stderr
        secrets_created.append(name)

    played = _podman("kube", "play", str(kube_file))
    try:
        assert played.returncode == 0, f"podman kube play failed:\n{played.stdout}\n{played.stderr}"
        from celery import Celery

        client = Celery("chart-e2e", broker=env["BROKER_URL"], backend=env["CELERY_RESULT_BACKEND"])
        options = {"global_keyprefix": env["REDIS_KEY_PREFIX"]}
        client.conf.broker_transport_options = options
        client.conf.result_backend_transport_options = options
        try:
            result = client.send_task("rhesis.backend.tasks.echo", args=["from the chart"], queue="celery")
            value = _wait_for(result, container=f"tw-{node}-worker-e2e-pod-0-worker", timeout=240)
        finally:
            client.close()
        assert "Message: from the chart" in value
    except BaseException:
        logs = _podman("logs", "--tail", "200", f"tw-{node}-worker-e2e-pod-0-worker", timeout=60)
        print("worker container log:\n" + logs.stdout + logs.stderr)
        raise
    finally:
        _podman("kube", "down", str(kube_file), timeout=120)
        for name in secrets_created:
            _podman("secret", "rm", name, timeout=60)


def _wait_for(result: Any, container: str, timeout: float) -> Any:
    """The task's result; fails early, with the reason, when the worker container keeps restarting."""
    from celery.exceptions import TimeoutError as ResultTimeout

    deadline = time.monotonic() + timeout
    while True:
        try:
            return result.get(timeout=5)
        except ResultTimeout:
            state = _podman("inspect", container, "--format", "{{.RestartCount}} {{.State.Status}}", timeout=60)
            restarts = int((state.stdout.split() or ["0"])[0]) if state.returncode == 0 else 0
            if restarts >= 3:
                pytest.fail(f"worker container restarted {restarts} times (status {state.stdout.strip()}); "
                            "see its log below")
            if time.monotonic() > deadline:
                raise
