"""What ``import worker.app`` loads: the tasks' names, not the test execution machinery (docs/execution.md).

Every ``celery -A worker.app`` start and every producer pays for what the app imports, serially, before a pool
forks; the lanes' HTTP clients, templates and judges (aiohttp, jinja2, jsonschema) are imported by the process
that runs a lane, at its first lane. The execution tests (tests/execution/) run lanes in real workers.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT

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
