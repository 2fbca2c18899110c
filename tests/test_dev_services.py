"""Embedded servers of `make run` stop when asked, also after an earlier run was killed."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT

START_AND_STOP = """
from pathlib import Path
from worker.dev.services import postgres_admin_url, stop_embedded_servers
postgres_admin_url(Path({run_dir!r}))
{after}
"""


@pytest.fixture
def embedded_run_dir(run_dir: Path) -> Iterator[Path]:
    # Not under tmp_path: the cluster runs as another user and pytest keeps its base directory at mode 0700.
    path = run_dir / f"services-{secrets.token_hex(4)}"
    path.mkdir()
    yield path
    pid_file = path / "pgdata" / "postmaster.pid"
    if pid_file.exists():  # left running by a failed assertion: fast shutdown
        os.kill(int(pid_file.read_text().split()[0]), signal.SIGINT)
        deadline = time.monotonic() + 20
        while pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
    shutil.rmtree(path, ignore_errors=True)


def python(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WORKER_DEV_EMBEDDED": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.timeout(180)
def test_embedded_postgres_stops_after_an_earlier_run_was_killed(embedded_run_dir: Path) -> None:
    pid_file = embedded_run_dir / "pgdata" / "postmaster.pid"
    killed = python(START_AND_STOP.format(run_dir=str(embedded_run_dir),
                                          after="import os, signal; os.kill(os.getpid(), signal.SIGKILL)"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert pid_file.exists(), "the killed run's server should still be up (nothing stopped it)"

    # The next run takes the running server over and stops it when done, although the killed run is still
    # listed as one of its users.
    done = python(START_AND_STOP.format(run_dir=str(embedded_run_dir), after="stop_embedded_servers()"))
    assert done.returncode == 0, done.stderr
    assert not pid_file.exists(), "embedded PostgreSQL still running after stop_embedded_servers()"
