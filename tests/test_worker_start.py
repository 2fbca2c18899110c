"""What a worker's start costs: what ``import worker.app`` loads, and what the prefork pool's start does.

Every ``celery -A worker.app`` start and every producer pays for what the app imports, serially, before a pool
forks; the lanes' HTTP clients, templates and judges (aiohttp, jinja2, jsonschema) are imported by the process
that runs a lane, at its first lane (docs/execution.md). The execution tests (tests/execution/) run lanes in real
workers. Before the first pool forks, the main process freezes what its start made (worker/prefork.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

from tests.conftest import ROOT, WorkerProcess

#: Loaded at a process's first lane (worker/tasks/execution.py), never by importing the app.
LANE_ONLY = ("aiohttp", "jinja2", "jsonschema", "worker.execution.lane", "worker.execution.clients",
             "worker.execution.endpoint", "worker.execution.metrics")

#: The wire contract: every product task is registered by importing the app.
TASK_NAMES = ("rhesis.backend.tasks.echo", "rhesis.backend.tasks.count_test_sets",
              "rhesis.backend.tasks.get_test_configuration", "rhesis.backend.tasks.manual_db_example",
              "rhesis.backend.tasks.create_test_set", "rhesis.backend.tasks.execute_test_configuration",
              "rhesis.backend.tasks.execution.run_lane", "rhesis.backend.tasks.execution.cancel_test_run",
              "rhesis.backend.tasks.execution.sweep")


def test_importing_the_app_registers_every_task_without_the_lane_machinery(session_env: dict[str, str]) -> None:
    script = ("import json, sys; from worker.app import app; app.loader.import_default_modules(); "
              f"print(json.dumps({{'loaded': [m for m in {LANE_ONLY!r} if m in sys.modules], "
              "'tasks': sorted(app.tasks)}))")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**session_env, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, check=True, timeout=60)
    found = json.loads(out.stdout.splitlines()[-1])
    assert found["loaded"] == []
    assert set(TASK_NAMES) <= set(found["tasks"])


def test_the_start_is_frozen_for_the_main_process_and_every_pool_process(
        worker_factory: Callable[..., WorkerProcess], client_app) -> None:  # type: ignore[no-untyped-def]
    # One process that is replaced after each task: the first was forked while the worker started, the second
    # after it was ready. Both, and the main process, leave the start's objects to reference counting alone (so
    # their pages stay shared), while a cycle made later is still collected.
    worker = worker_factory(pool="prefork", concurrency=1, extra_args=("--max-tasks-per-child", "1"))
    probe = client_app.tasks["tests.probe.gc_frozen"]
    first = probe.apply_async(queue="celery").get(timeout=30)
    second = probe.apply_async(queue="celery").get(timeout=30)
    replies = client_app.control.broadcast("gc_frozen", destination=[worker.node], reply=True, timeout=10)
    assert replies, "the worker did not answer"
    main = replies[0][worker.node]

    assert second["pid"] != first["pid"]
    assert first["frozen"] > 10_000  # the imports' objects
    assert second["frozen"] > 10_000  # a replacement inherits the same
    assert main["frozen"] > 10_000
    assert main["new_cycle_collected"] is True


def test_a_worker_of_the_execution_queue_refuses_to_start_without_the_lane_packages(
        session_env: dict[str, str], tmp_path) -> None:  # type: ignore[no-untyped-def]
    # The lanes import jsonschema at their first run; an environment without it must fail at start, not at every
    # lane. The shim hides the package the way a missing install would (find_spec finds nothing).
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n"
        "class _Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'jsonschema' or name.startswith('jsonschema.'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, _Hide())\n")
    env = {**session_env, "PYTHONPATH": f"{tmp_path}:{ROOT}", "CELERY_WORKER_QUEUES": "celery,execution"}
    done = subprocess.run([sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--pool", "solo",
                           "--without-mingle", "--without-gossip", "--hostname", "lanecheck@localhost"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 70, done.stderr[-2000:]
    assert "worker start refused: the execution queue's lanes need jsonschema" in done.stderr
