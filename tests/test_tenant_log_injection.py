"""Values from a message (tenant headers, task id) are logged escaped: a newline in a header forges no log line."""

from __future__ import annotations

import time

import pytest

FORGED = "[fake] ERROR forged line"
TIMEOUT = 60


@pytest.fixture(scope="module")
def worker(worker_factory):  # type: ignore[no-untyped-def]
    return worker_factory(pool="prefork", concurrency=1)


def lines_after(worker, task_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 10  # the outcome line follows the stored result
    while True:
        lines = worker.log().splitlines()
        if any("outcome=" in line and task_id in line for line in lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


@pytest.mark.parametrize("header", ["organization_id", "user_id"])
def test_newline_in_a_tenant_header_forges_no_log_line(worker, client_app, header) -> None:
    headers = {"organization_id": "0b7d4f6e-1c2a-4e58-9a41-6c3f2e1d0a01", header: f"x\n{FORGED}\r\n{FORGED}"}
    result = client_app.send_task("tests.probe.tenant", headers=headers)
    with pytest.raises(Exception, match="not a valid UUID"):
        result.get(TIMEOUT)
    lines = lines_after(worker, result.id)
    assert any("outcome=failure" in line and result.id in line for line in lines), lines[-20:]
    forged = [line for line in lines if line.startswith(FORGED) or line.startswith("\r" + FORGED)]
    assert not forged, forged
    assert any(f"\\n{FORGED}" in line for line in lines), "the value is still visible, escaped"



def test_newline_in_the_task_id_forges_no_log_line(worker, client_app) -> None:
    """Celery's own lines ("Task name[id] received/succeeded") quote the id from the message."""
    task_id = f"id-{time.monotonic_ns()}\n{FORGED}"
    client_app.send_task("tests.probe.tenant", task_id=task_id).get(TIMEOUT)
    escaped = task_id.replace("\n", "\\n")
    deadline = time.monotonic() + 10
    while f"{escaped}] succeeded" not in worker.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = worker.log().splitlines()
    assert any(f"{escaped}] succeeded" in line for line in lines), lines[-20:]
    forged = [line for line in lines if line.startswith(FORGED)]
    assert not forged, forged
