"""LOG_FORMAT=json: one parseable JSON object per record, with the tenant fields, and no forged line or field."""

from __future__ import annotations

import json
import time
import uuid

import pytest

TIMEOUT = 60
ORG = "0b7d4f6e-1c2a-4e58-9a41-6c3f2e1d0a01"
USER = "7c1d9e4f-2a5b-4c3d-8e9f-0a1b2c3d4e5f"
CANCEL = "rhesis.backend.tasks.execution.cancel_test_run"
FORGED = '", "level": "CRITICAL", "organization_id": "forged'


@pytest.fixture(scope="module")
def worker(worker_factory):  # type: ignore[no-untyped-def]
    return worker_factory(pool="prefork", concurrency=1, env={"LOG_FORMAT": "json"})


def records(worker, task_id: str) -> list[dict]:  # type: ignore[no-untyped-def,type-arg]
    """Every JSON record of the log, once the task's outcome line is written (Celery's banner is printed, not
    logged, and stays text)."""
    deadline = time.monotonic() + 10
    while True:
        lines = [line for line in worker.log().splitlines() if line.startswith("{")]
        parsed = [json.loads(line) for line in lines]
        done = any(r.get("task_id") == task_id and "outcome=" in r["message"] for r in parsed)
        if done or time.monotonic() > deadline:
            return parsed
        time.sleep(0.1)


def test_task_records_carry_the_tenant_fields(worker, client_app) -> None:
    result = client_app.send_task("tests.probe.tenant", headers={"organization_id": ORG, "user_id": USER})
    result.get(TIMEOUT)
    mine = [r for r in records(worker, result.id) if r.get("task_id") == result.id]
    assert mine, "the task logged records"
    for record in mine:
        assert record["task_name"] == "tests.probe.tenant"
        assert record["organization_id"] == ORG and record["user_id"] == USER
        assert {"time", "level", "logger", "message"} <= record.keys()
    assert any(r["logger"] == "celery.app.trace" and "succeeded" in r["message"] for r in mine)
    outside = [r for r in records(worker, result.id) if r["logger"] == "celery.apps.worker"]
    assert outside and all("task_id" not in r for r in outside), "records outside tasks have no task fields"


def test_records_of_an_execution_task_carry_the_run_id(worker, client_app) -> None:
    run_id = str(uuid.uuid4())
    result = client_app.send_task(CANCEL, args=[run_id], headers={"organization_id": ORG, "user_id": USER})
    try:
        result.get(TIMEOUT)
    except Exception:  # noqa: S110 - an unknown run may fail; its records are what this test reads
        pass
    mine = [r for r in records(worker, result.id) if r.get("task_id") == result.id]
    assert mine and all(r["run_id"] == run_id for r in mine), mine


def test_a_forged_header_stays_one_string_value_on_one_line(worker, client_app) -> None:
    result = client_app.send_task("tests.probe.tenant", headers={"organization_id": ORG,
                                                                 "user_id": f"x\n{{{FORGED}\r\n{FORGED}"})
    with pytest.raises(Exception, match="not a valid UUID"):
        result.get(TIMEOUT)
    parsed = records(worker, result.id)  # json.loads of every line starting with "{" succeeded
    mine = [r for r in parsed if r.get("task_id") == result.id]
    assert mine
    assert all(r["organization_id"] == ORG for r in mine), "no field overwritten"
    assert all(r["level"] != "CRITICAL" for r in parsed)
    forged = [line for line in worker.log().splitlines() if "forged" in line and not line.startswith('{"time"')]
    assert not forged, forged
    assert any("\\n" in r["user_id"] and "forged" in r["user_id"] for r in mine), "the value is kept, escaped"
