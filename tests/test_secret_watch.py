"""The session-wide secret leak check (tests/support/secret_watch.py) fails a run whose outputs hold a secret.

Each case runs a throwaway test file in a pytest subprocess with the same plugin, so that the deliberate leak
fails only that run: a real worker process whose environment holds a signing key and a database password, and
whose test-only app (tests/support/leaky_worker_app.py) logs the variable named by LEAK_PRINT.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.conftest import ROOT

THROWAWAY = '''
import os
import shutil

import pytest

from tests.conftest import start_worker_process

NAMES = ("BROKER_URL", "CELERY_RESULT_BACKEND", "DATABASE_URL", "MIGRATION_DATABASE_URL", "REDIS_KEY_PREFIX",
         "TENANT_SIGNING_KEY", "LEAK_PRINT")


@pytest.fixture()
def log_dir(tmp_path):
    yield tmp_path / "logs"
    if os.environ["LEAK_REMOVE_LOG"]:  # as dev_run_dir of test_make_run does: gone long before session end
        shutil.rmtree(tmp_path / "logs")


def test_a_worker_runs(log_dir):
    log_dir.mkdir()
    env = {name: os.environ[name] for name in NAMES}
    worker = start_worker_process({**env, "ENV_FILE": "/nonexistent/.env"}, log_dir, pool="solo", concurrency=1,
                                  app="tests.support.leaky_worker_app")
    assert worker.stop() == 0
'''


@pytest.fixture()
def secrets_used() -> dict[str, str]:
    return {"signing key": secrets.token_urlsafe(32), "db password": f"p@ss/{secrets.token_hex(8)}:+"}


def run_throwaway(tmp_path: Path, redis_base: str, used: dict[str, str], leak_print: str,
                  remove_log: bool = False) -> subprocess.CompletedProcess:
    (tmp_path / "test_throwaway.py").write_text(THROWAWAY)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LEAK_PRINT": leak_print,
           "LEAK_REMOVE_LOG": "1" if remove_log else "",
           "TENANT_SIGNING_KEY": used["signing key"],
           # The worker never connects to PostgreSQL here; the URL only carries a password to leak.
           "DATABASE_URL": f"postgresql://leak_user:{quote(used['db password'], safe='')}@127.0.0.1:5432/x",
           "MIGRATION_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/x",
           "BROKER_URL": f"{redis_base}/0", "CELERY_RESULT_BACKEND": f"{redis_base}/1",
           "REDIS_KEY_PREFIX": f"twleak-{secrets.token_hex(4)}:"}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.support.secret_watch", "-p", "no:cacheprovider",
                           "-q", "-c", "/dev/null", "--rootdir", str(tmp_path), "--basetemp", str(tmp_path / "base"),
                           str(tmp_path / "test_throwaway.py")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)


def test_a_run_without_a_leak_passes(tmp_path: Path, redis_base: str, secrets_used: dict[str, str]) -> None:
    done = run_throwaway(tmp_path, redis_base, secrets_used, leak_print="")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SECRET LEAK" not in done.stdout


@pytest.mark.parametrize(("leak_print", "label", "remove_log"), [
    ("TENANT_SIGNING_KEY", "TENANT_SIGNING_KEY of worker test-solo-", False),  # raw
    ("DATABASE_URL", "DATABASE_URL of worker test-solo-", False),  # URL-encoded inside the URL
    ("TENANT_SIGNING_KEY", "TENANT_SIGNING_KEY of worker test-solo-", True),  # log gone by session end
])
def test_a_worker_that_logs_a_secret_fails_the_run_naming_file_and_label(
        tmp_path: Path, redis_base: str, secrets_used: dict[str, str], leak_print: str, label: str,
        remove_log: bool) -> None:
    done = run_throwaway(tmp_path, redis_base, secrets_used, leak_print=leak_print, remove_log=remove_log)
    output = done.stdout + done.stderr
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, output
    assert "1 passed" in output  # the test itself passed: only the leak check fails the run
    leak_lines = [line for line in done.stdout.splitlines() if line.startswith("SECRET LEAK ")]
    assert leak_lines and all(".log (worker test-solo-" in line and label in line for line in leak_lines), output
    for value in secrets_used.values():
        assert value not in output and quote(value, safe="") not in output


# Each test leaks its own key through a subprocess it runs and reads back itself, as the suite's CLI, entrypoint and
# container tests do; `python -m worker check` with every key set must not leak (the product masks them).
CAPTURED_THROWAWAY = '''
import os
import subprocess
import sys
from pathlib import Path

import pytest

ENTRYPOINT = os.environ["LEAK_ENTRYPOINT"]
PATH = {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


def test_cli_run_with_capture_output():
    env = {**PATH, "TENANT_SIGNING_KEY": os.environ["KEY_CLI"]}
    code = "import os; print(os.environ['TENANT_SIGNING_KEY'])"
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).returncode == 0


def test_entrypoint_run_with_communicate():
    env = {**PATH, "DB_ENCRYPTION_KEY": os.environ["KEY_ENTRYPOINT"]}
    proc = subprocess.Popen(["bash", ENTRYPOINT, "printenv", "DB_ENCRYPTION_KEY"], env=env, stdout=subprocess.PIPE)
    proc.communicate(timeout=60)


def test_container_style_argument():
    # podman run --env NAME=value: the secret is in the arguments only, the engine prints it back.
    done = subprocess.run(["bash", ENTRYPOINT, "echo", "--env", f"GEMINI_API_KEY={os.environ['KEY_ARGUMENT']}"],
                          env=PATH, capture_output=True)
    assert done.returncode == 0


@pytest.fixture()
def log(tmp_path):
    yield tmp_path / "out.log"
    (tmp_path / "out.log").unlink()  # gone at teardown: only the scan right after the test sees it


def test_output_file_removed_before_the_session_ends(log):
    env = {**PATH, "AZURE_OPENAI_API_KEY": os.environ["KEY_FILE"]}
    with log.open("wb") as out:
        subprocess.run([sys.executable, "-c", "import os; print(os.environ['AZURE_OPENAI_API_KEY'])"], env=env,
                       stdout=out, check=True)


def test_the_product_cli_masks_them():
    env = {**PATH, "ENV_FILE": "/nonexistent/.env", "TENANT_SIGNING_KEY": os.environ["KEY_CLI"],
           "DB_ENCRYPTION_KEY": os.environ["KEY_ENTRYPOINT"], "GEMINI_API_KEY": os.environ["KEY_ARGUMENT"],
           "AZURE_OPENAI_API_KEY": os.environ["KEY_FILE"]}
    done = subprocess.run([sys.executable, "-m", "worker", "check"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
'''


def test_subprocess_output_the_tests_capture_themselves_is_searched(tmp_path: Path) -> None:
    from cryptography.fernet import Fernet

    keys = {"KEY_CLI": secrets.token_urlsafe(32), "KEY_ENTRYPOINT": Fernet.generate_key().decode(),
            "KEY_ARGUMENT": secrets.token_hex(20), "KEY_FILE": secrets.token_hex(20)}
    (tmp_path / "test_captured.py").write_text(CAPTURED_THROWAWAY)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LEAK_ENTRYPOINT": str(ROOT / "entrypoint.sh"), **keys}
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.support.secret_watch", "-p", "no:cacheprovider",
                           "-q", "-c", "/dev/null", "--rootdir", str(tmp_path), "--basetemp", str(tmp_path / "base"),
                           str(tmp_path / "test_captured.py")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    output = done.stdout + done.stderr
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, output
    assert "5 passed" in output  # only the leak check fails the run
    leaks = sorted(line for line in done.stdout.splitlines() if line.startswith("SECRET LEAK "))
    expected = {
        "test_cli_run_with_capture_output": "python started by ",
        "test_entrypoint_run_with_communicate": "bash started by ",
        "test_container_style_argument": "bash started by ",
        "test_output_file_removed_before_the_session_ends": "out.log (python started by ",
    }
    assert len(leaks) == len(expected), output
    for test, source in expected.items():
        assert any(source in line and f"test_captured.py::{test}" in line for line in leaks), (test, leaks)
    assert not any("-m worker" in line for line in leaks), leaks
    for value in keys.values():
        assert value not in output
