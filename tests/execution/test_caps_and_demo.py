"""The per-run and per-endpoint caps hold across lanes and workers; the demo configuration runs end to end."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.conftest import ROOT, WorkerProcess, start_worker_process
from tests.execution.test_runs import EXECUTION_ENV, execute, wait_for_run
from tests.support.endpoint_server import EndpointServer
from tests.support.execution_data import ExecutionData
from worker.tasks.execution import LANE_TASK

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def data(migrated_database) -> Iterator[ExecutionData]:  # type: ignore[no-untyped-def]
    made = ExecutionData(migrated_database.owner_url)
    yield made
    made.close()


@pytest.fixture
def two_workers(session_env, run_dir, client_app) -> Iterator[list[WorkerProcess]]:  # type: ignore[no-untyped-def]
    # Small lanes, so that one run spreads over several lanes in several processes of two workers.
    env = {**session_env, **EXECUTION_ENV, "EXECUTION_LANE_CONCURRENCY": "2"}
    workers = [start_worker_process(env, run_dir, "prefork", 4, ping_app=client_app) for _ in range(2)]
    yield workers
    for worker in workers:
        worker.stop()


def test_the_run_cap_bounds_calls_in_flight_across_lanes_and_workers(client_app, two_workers, data) -> None:
    with EndpointServer() as server:
        server.configure(latency=0.2)
        configuration = data.configuration(server.url + "/chat", 60, max_concurrency=5)
        run_id = execute(client_app, configuration)
        run = wait_for_run(data, configuration.organization_id, run_id)
    assert run.status == "completed" and server.total_calls() == 60
    assert 3 <= server.in_flight_max <= 5, server.in_flight_max


def test_extra_lane_messages_never_raise_calls_above_the_cap(client_app, two_workers, data) -> None:
    """A lane message delivered twice, or sent by a sweeper while the run's lanes are alive, finds every lane held
    and does nothing: the cap is the sum of the lanes' shares, and each lane has one holder."""
    with EndpointServer() as server:
        server.configure(latency=0.2)
        configuration = data.configuration(server.url + "/chat", 60, max_concurrency=5)
        run_id = execute(client_app, configuration)
        deadline = time.monotonic() + 30
        while server.total_calls() < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        headers = {"organization_id": configuration.organization_id, "user_id": configuration.user_id}
        extras = [client_app.send_task(LANE_TASK, args=[run_id], kwargs=kwargs, headers=headers)
                  for kwargs in ({}, {}, {"lane": 0}, {"lane": 1, "token": "reserved:forged"}, {"lane": 2})]
        reports = [extra.get(timeout=60) for extra in extras]
        run = wait_for_run(data, configuration.organization_id, run_id)
    assert run.status == "completed" and server.total_calls() == 60
    assert server.in_flight_max <= 5, server.in_flight_max
    assert all(report["skipped"] and report["claimed"] == 0 for report in reports), reports


def test_the_endpoint_cap_bounds_calls_across_runs(client_app, two_workers, data) -> None:
    with EndpointServer() as server:
        server.configure(latency=0.2)
        first = data.configuration(server.url + "/chat", 30, max_concurrency=10, endpoint_max_concurrency=3)
        second = data.configuration(server.url + "/chat", 30, max_concurrency=10, endpoint_id=first.endpoint_id,
                                    org=(first.organization_id, first.user_id))
        runs = [(c, execute(client_app, c)) for c in (first, second)]
        for configuration, run_id in runs:
            assert wait_for_run(data, configuration.organization_id, run_id).status == "completed"
    assert server.total_calls() == 60
    assert server.in_flight_max <= 3, server.in_flight_max


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_demo_configuration_runs_against_the_demo_endpoint(client_app, session_env, run_dir, data) -> None:
    port = _free_port()
    env = {**os.environ, **session_env, **EXECUTION_ENV, "PYTHONPATH": str(ROOT)}
    endpoint = subprocess.Popen([sys.executable, "-m", "worker", "demo-endpoint", "--port", str(port),
                                 "--latency", "0"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    worker = None
    try:
        demo = subprocess.run([sys.executable, "-m", "worker", "demo-data", "--json", "--endpoint-url",
                               f"http://127.0.0.1:{port}/chat"], env=env, capture_output=True, text=True,
                              timeout=120, check=True)
        summary = json.loads(demo.stdout)
        organization = summary["organizations"][0]
        assert {e["url"] for e in organization["endpoints"]} == {f"http://127.0.0.1:{port}/chat"}
        configuration_id = organization["test_configurations"][0]["id"]
        worker = start_worker_process({**session_env, **EXECUTION_ENV}, run_dir, "prefork", 2, ping_app=client_app)
        result = client_app.send_task("rhesis.backend.tasks.execute_test_configuration", args=[configuration_id],
                                      headers={"organization_id": organization["id"]}).get(timeout=60)
        deadline = time.monotonic() + 60
        while (run := data.run(organization["id"], result["test_run_id"])).status in ("queued", "running"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        results = data.results(organization["id"], result["test_run_id"])
        assert run.status == "completed" and len(results) == result["total_tests"] > 0
        assert all(r.output and r.http_status == 200 for r in results)
    finally:
        if worker is not None:
            worker.stop()
        endpoint.terminate()
        endpoint.wait(10)
