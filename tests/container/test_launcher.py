"""The launcher's own pieces: CELERY_WORKER_MAX_MEMORY_PER_CHILD=auto from the cgroup limit, and Flower's
credentials reaching Flower only (run through entrypoint.sh with a stub `celery` on PATH)."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from config import load_settings
from tests.container.conftest import ENTRYPOINT, ROOT, host_environment
from worker.launch.command import worker_launch
from worker.launch.memory import memory_limit_bytes

GIB = 1 << 30


def limit_file(tmp_path: Path, text: str, name: str = "memory.max") -> Path:
    path = tmp_path / name
    path.write_text(text + "\n")
    return path


@pytest.mark.parametrize(("text", "expected"), [
    ("max", 0),  # cgroup v2 without a limit
    ("9223372036854771712", 0),  # cgroup v1 without a limit: a huge number
    (str(GIB), GIB),
])
def test_memory_limit_is_read_from_the_cgroup_file(tmp_path, text, expected):
    assert memory_limit_bytes((limit_file(tmp_path, text),)) == expected


def test_memory_limit_falls_back_to_cgroup_v1_and_to_none(tmp_path):
    v1 = limit_file(tmp_path, str(2 * GIB), "memory.limit_in_bytes")
    assert memory_limit_bytes((tmp_path / "missing", v1)) == 2 * GIB
    assert memory_limit_bytes((tmp_path / "missing",)) == 0


def settings_with(**values: str):  # type: ignore[no-untyped-def]
    return load_settings(environ={"CELERY_WORKER_MAX_MEMORY_PER_CHILD": "auto", **values}, env_file="/nonexistent")


def max_memory_in(argv: list[str]) -> str | None:
    return argv[argv.index("--max-memory-per-child") + 1] if "--max-memory-per-child" in argv else None


def test_auto_max_memory_is_three_quarters_of_the_limit_per_child(tmp_path, caplog):
    cgroup = (limit_file(tmp_path, str(GIB)),)
    with caplog.at_level(logging.INFO, logger="entrypoint"):
        launch = worker_launch(settings_with(CELERY_WORKER_CONCURRENCY="4"), cgroup)
    # The chart's former arithmetic (tw.pools): KiB limit * 3 / (4 * concurrency).
    assert max_memory_in(launch.argv) == str(GIB // 1024 * 3 // 16) == "196608"
    assert "CELERY_WORKER_MAX_MEMORY_PER_CHILD=auto: 196608 KiB per child" in caplog.text


def test_auto_max_memory_is_capped_and_unbounded_where_it_must_be(tmp_path):
    huge = (limit_file(tmp_path, str(1 << 52)),)  # 4 PiB: above the option's maximum per child
    assert max_memory_in(worker_launch(settings_with(CELERY_WORKER_CONCURRENCY="1"), huge).argv) == "1073741824"
    none = (limit_file(tmp_path, "max", "none"),)
    launch = worker_launch(settings_with(), none)
    assert max_memory_in(launch.argv) is None
    limited = (limit_file(tmp_path, str(GIB), "limited"),)
    threads = worker_launch(settings_with(CELERY_WORKER_POOL="threads"), limited)
    assert max_memory_in(threads.argv) is None, "only prefork children are replaced"


def test_auto_is_accepted_and_other_words_are_refused():
    assert settings_with().celery_worker_max_memory_per_child == "auto"
    done = subprocess.run([sys.executable, "-m", "worker", "check"], cwd=ROOT, capture_output=True, text=True,
                          env=host_environment({"CELERY_WORKER_MAX_MEMORY_PER_CHILD": "half",
                                                "ENV_FILE": "/nonexistent"}), check=False)
    assert done.returncode == 64
    assert "CELERY_WORKER_MAX_MEMORY_PER_CHILD='half'" in done.stderr and "or auto" in done.stderr


STUB_CELERY = """#!/bin/sh
# $3 is the celery subcommand: worker or flower. Record the environment and the argv, then exit once both did
# (the first to exit makes the supervisor stop the other).
env > "$STUB_DIR/$3.env"
printf '%s\\n' "$@" > "$STUB_DIR/$3.argv"
for _ in $(seq 100); do
    [ -e "$STUB_DIR/worker.argv" ] && [ -e "$STUB_DIR/flower.argv" ] && exit 0
    sleep 0.1
done
exit 1
"""


def test_flower_credentials_reach_flower_only(tmp_path):
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "celery").write_text(STUB_CELERY)
    (stub / "celery").chmod(0o755)
    secret = tmp_path / "flower-auth"
    secret.write_text("ops:very-secret-9876\n")
    env = host_environment({"ENABLE_FLOWER": "yes", "FLOWER_BASIC_AUTH_FILE": str(secret), "STUB_DIR": str(tmp_path),
                            "WORKER_HEALTH_DIR": str(tmp_path / "health"), "ENV_FILE": "/nonexistent",
                            "CELERY_WORKER_MAX_MEMORY_PER_CHILD": "auto", "CELERY_WORKER_MAX_TASKS_PER_CHILD": "0",
                            "CELERY_RESULT_BACKEND": "redis://127.0.0.1:6379/1"})
    env["PATH"] = f"{stub}:{env['PATH']}"
    done = subprocess.run([str(ENTRYPOINT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    flower_env = (tmp_path / "flower.env").read_text()
    worker_env = (tmp_path / "worker.env").read_text()
    assert "FLOWER_BASIC_AUTH=ops:very-secret-9876\n" in flower_env
    assert "FLOWER_BASIC_AUTH_FILE" not in flower_env
    assert "FLOWER_BASIC_AUTH" not in worker_env and "very-secret" not in worker_env
    for name in ("worker.argv", "flower.argv"):
        assert "very-secret" not in (tmp_path / name).read_text()
    assert "--task-events" in (tmp_path / "worker.argv").read_text().split()
    assert "very-secret" not in done.stderr + done.stdout
    assert "supervising the worker" in done.stderr
    # Celery reads CELERY_* variables as options: the ones the launcher turned into argv reach neither child.
    for child_env in (worker_env, flower_env):
        assert "CELERY_WORKER_MAX_MEMORY_PER_CHILD=" not in child_env
        assert "CELERY_WORKER_MAX_TASKS_PER_CHILD=" not in child_env
        assert "CELERY_RESULT_BACKEND=" in child_env  # the app reads it
