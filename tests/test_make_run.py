"""`make run` (python -m worker.dev.run): provisions, migrates, fills demo data, starts worker and Flower, and the
command it prints really sends a task."""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT
from worker.dev.provision import ProvisionedDatabase, drop_database
from worker.dev.services import free_port


def http_status(url: str, auth: str | None = None) -> int:
    request = urllib.request.Request(url)  # noqa: S310 - loopback only
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - loopback only
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


@pytest.mark.timeout(300)
def test_make_run_starts_worker_and_flower_and_prints_a_working_send_command(redis_base: str, pg_admin_url: str,
                                                                               tmp_path: Path) -> None:
    if not pg_admin_url.startswith("postgresql://postgres@127.0.0.1"):
        pytest.skip("exercised against the machine's PostgreSQL; the embedded path is covered by make run itself")
    port = free_port()
    prefix = f"twrun-{secrets.token_hex(3)}:"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "MIGRATION_DATABASE_URL"))}
    env.update({"WORKER_DEV_RUN_DIR": str(tmp_path), "BROKER_URL": f"{redis_base}/0",
                "CELERY_RESULT_BACKEND": f"{redis_base}/1", "REDIS_KEY_PREFIX": prefix, "FLOWER_PORT": str(port),
                "ENV_FILE": "/nonexistent/.env", "CELERY_WORKER_HOSTNAME": f"makerun-{secrets.token_hex(3)}@%h"})
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "worker.dev.run"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    state_file = tmp_path / "dev-database.json"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (tmp_path / "health" / "ready").exists():
            assert proc.poll() is None, log.read_text()
            time.sleep(0.3)
        output = log.read_text()
        assert (tmp_path / "health" / "ready").exists(), output
        auth = re.search(r"basic auth (\S+:\S+)\)", output).group(1)
        assert http_status(f"http://127.0.0.1:{port}/api/workers") == 401
        assert http_status(f"http://127.0.0.1:{port}/api/workers", auth) == 200
        demo = output[output.index("demo data:"):]
        org = re.search(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", demo).group(0)
        send_line = next(line for line in output.splitlines() if "-m worker send" in line)
        command = send_line.strip().replace("<id>", org).split()
        sent = subprocess.run([sys.executable if c == ".venv/bin/python" else c for c in command], cwd=ROOT,
                              env={**env}, capture_output=True, text=True, timeout=60)
        assert sent.returncode == 0, sent.stderr
        result = json.loads(sent.stdout.strip().splitlines()[-1])
        assert result["organization_id"] == org and result["count"] >= 1
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        if state_file.exists():
            state = json.loads(state_file.read_text())
            drop_database(pg_admin_url, ProvisionedDatabase(state["name"], state["owner_url"], state["runtime_url"],
                                                            state["admin_url"]))
    assert proc.returncode == 0, log.read_text()[-3000:]

