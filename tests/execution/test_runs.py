"""Test execution end to end: real worker processes, Redis, PostgreSQL and an endpoint server on loopback.

Counts are exact: one result per test, and endpoint calls per test counted by the server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator

import psutil
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from tests.conftest import WorkerProcess, start_worker_process
from tests.support.endpoint_server import EndpointServer
from tests.support.execution_data import Configuration, ExecutionData
from worker.db.models import TestRun
from worker.db.session import tenant_session
from worker.execution.cancel import cancel_test_run
from worker.execution.runs import start_run
from worker.execution.store import MAX_CLAIMS

pytestmark = pytest.mark.timeout(300)

EXECUTE = "rhesis.backend.tasks.execute_test_configuration"
CANCEL = "rhesis.backend.tasks.execution.cancel_test_run"
EXECUTION_ENV = {"EXECUTION_ALLOW_PRIVATE_TARGETS": "yes", "EXECUTION_LEASE_SECONDS": "10",
                 "EXECUTION_SWEEP_INTERVAL": "0", "EXECUTION_RETRY_AFTER_CAP": "5"}


@pytest.fixture(scope="module")
def data(migrated_database) -> Iterator[ExecutionData]:  # type: ignore[no-untyped-def]
    made = ExecutionData(migrated_database.owner_url)
    yield made
    made.close()


@pytest.fixture
def server() -> Iterator[EndpointServer]:
    with EndpointServer() as endpoint:
        yield endpoint


@pytest.fixture
def workers(session_env, run_dir, client_app) -> Iterator[Callable[..., WorkerProcess]]:  # type: ignore[no-untyped-def]
    started: list[WorkerProcess] = []

    def start(concurrency: int = 4, pool: str = "prefork", **env: str) -> WorkerProcess:
        worker = start_worker_process({**session_env, **EXECUTION_ENV, **env}, run_dir, pool, concurrency,
                                      ping_app=client_app)
        started.append(worker)
        return worker

    yield start
    # Each test's workers stop with it: a worker left running would take part in the next test's runs.
    for worker in started:
        worker.stop()


def execute(client_app, configuration: Configuration, **kwargs: object) -> str:  # type: ignore[no-untyped-def]
    result = client_app.send_task(EXECUTE, args=[configuration.configuration_id], kwargs=kwargs,
                                  headers={"organization_id": configuration.organization_id,
                                           "user_id": configuration.user_id})
    return result.get(timeout=60)["test_run_id"]


def wait_for_run(data: ExecutionData, org: str, run_id: str, timeout: float = 120,
                 statuses: tuple[str, ...] = ("completed", "partial", "failed", "cancelled")):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        run = data.run(org, run_id)
        if run is not None and run.status in statuses:
            return run
        assert time.monotonic() < deadline, f"run {run_id} still {run.status if run else 'missing'}: " \
                                            f"{data.item_states(org, run_id)}"
        time.sleep(0.2)


def test_a_thousand_tests_give_one_result_and_one_call_each(client_app, workers, data, server) -> None:
    workers()
    configuration = data.configuration(server.url + "/chat", 1000)
    run_id = execute(client_app, configuration)
    run = wait_for_run(data, configuration.organization_id, run_id)
    results = data.results(configuration.organization_id, run_id)
    assert run.status == "completed"
    assert run.total_tests == 1000 and run.counts["not_scored"] == 1000, run.counts
    assert sorted(str(r.test_id) for r in results) == sorted(configuration.test_ids)
    assert server.total_calls() == 1000
    assert set(server.calls.values()) == {1}
    prompts = {test_id: f"question {n}" for n, test_id in enumerate(configuration.test_ids)}
    assert all(r.output == f"echo: {prompts[str(r.test_id)]}" for r in results)
    assert all(r.attempts == 1 and r.http_status == 200 and r.latency_ms is not None for r in results)


def test_metrics_judge_every_answer(client_app, workers, data, server) -> None:
    workers()
    metrics = ({"name": "echoes", "kind": "contains", "parameters": {"value": "echo:"}},
               {"name": "never", "kind": "regex", "parameters": {"pattern": "^refund$"}})
    passing = data.configuration(server.url + "/chat", 10, metrics=metrics[:1])
    failing = data.configuration(server.url + "/chat", 10, metrics=metrics)
    runs = [(c, execute(client_app, c)) for c in (passing, failing)]
    for configuration, run_id in runs:
        wait_for_run(data, configuration.organization_id, run_id)
    passed = data.results(passing.organization_id, runs[0][1])
    failed = data.results(failing.organization_id, runs[1][1])
    assert {r.status for r in passed} == {"pass"} and len(passed) == 10
    assert {r.status for r in failed} == {"fail"} and len(failed) == 10
    assert [m["name"] for m in failed[0].metrics] == ["echoes", "never"]
    assert failed[0].metrics[1]["passed"] is False and failed[0].metrics[1]["reason"]


def test_a_redelivered_execute_message_continues_its_run(client_app, workers, data, server) -> None:
    workers()
    configuration = data.configuration(server.url + "/chat", 20)
    task_id = str(uuid.uuid4())
    headers = {"organization_id": configuration.organization_id, "user_id": configuration.user_id}
    first = client_app.send_task(EXECUTE, args=[configuration.configuration_id], task_id=task_id, headers=headers)
    run_id = first.get(timeout=60)["test_run_id"]
    second = client_app.send_task(EXECUTE, args=[configuration.configuration_id], task_id=task_id, headers=headers)
    assert second.get(timeout=60)["test_run_id"] == run_id
    wait_for_run(data, configuration.organization_id, run_id)
    assert data.result_count(configuration.organization_id, run_id) == 20
    assert set(server.calls.values()) == {1} and server.total_calls() == 20


def test_flaky_endpoint_results_and_attempts(client_app, workers, data) -> None:
    workers()
    cases = {
        "503 then success": ({"fail_first": 1, "fail_status": 503}, "not_scored", 2),
        "429 Retry-After seconds": ({"fail_first": 1, "fail_status": 429, "retry_after": "1"}, "not_scored", 2),
        "429 Retry-After date": ({"fail_first": 1, "fail_status": 429, "retry_after": "date:2"}, "not_scored", 2),
        "always 500": ({"fail_first": 99, "fail_status": 500}, "error", 3),
        "404": ({"fail_first": 99, "fail_status": 404}, "error", 1),
    }
    for name, (behaviour, status, attempts) in cases.items():
        with EndpointServer() as endpoint:
            endpoint.configure(**behaviour)
            configuration = data.configuration(endpoint.url + "/chat", 3)
            run_id = execute(client_app, configuration)
            run = wait_for_run(data, configuration.organization_id, run_id)
            results = data.results(configuration.organization_id, run_id)
            assert {r.status for r in results} == {status}, name
            assert {r.attempts for r in results} == {attempts}, name
            assert set(endpoint.calls.values()) == {attempts}, name
            assert run.status == ("failed" if status == "error" else "completed"), name
            if status == "error":
                assert all(r.error_type in ("http_5xx", "http_4xx") for r in results), name
                assert all(not r.metrics for r in results), "an invocation error reached a metric"


def _kill_tree(worker: WorkerProcess) -> None:
    process = psutil.Process(worker.proc.pid)
    children = process.children(recursive=True)
    for child in children:
        os.kill(child.pid, signal.SIGKILL)
    os.kill(process.pid, signal.SIGKILL)
    worker.proc.wait(10)


def test_sigkilled_worker_mid_run_another_worker_finishes_it(client_app, workers, data, server) -> None:
    server.configure(latency=0.2)
    first = workers()
    configuration = data.configuration(server.url + "/chat", 600, max_concurrency=40)
    run_id = execute(client_app, configuration)
    deadline = time.monotonic() + 60
    while data.result_count(configuration.organization_id, run_id) < 100:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    _kill_tree(first)
    stored_at_kill = {str(r.test_id) for r in data.results(configuration.organization_id, run_id)}
    workers()
    run = wait_for_run(data, configuration.organization_id, run_id, timeout=180)
    results = data.results(configuration.organization_id, run_id)
    assert run.status == "completed"
    assert len(results) == 600 and len({r.test_id for r in results}) == 600
    called_twice = {key for key, n in server.calls.items() if n > 1}
    assert not called_twice & stored_at_kill, "a test whose result was stored was called again"
    # Called but not stored when the worker died: in flight, or finished and not yet stored; a lane keeps those
    # within its leases, its share of the cap plus half of it leased ahead (docs/execution.md).
    assert len(called_twice) <= 40 + 40 // 2, "more tests called twice than a lane may hold unstored"
    assert max(server.calls.values()) <= 2


def test_cancelling_a_run_stops_calls_in_flight_and_keeps_finished_results(client_app, workers, data,
                                                                          server) -> None:
    server.configure(latency=3.0)
    workers()
    configuration = data.configuration(server.url + "/chat", 200, max_concurrency=10)
    run_id = execute(client_app, configuration)
    deadline = time.monotonic() + 30
    while data.result_count(configuration.organization_id, run_id) < 10 or server.in_flight < 5:
        assert time.monotonic() < deadline, "the run did not get going"
        time.sleep(0.05)
    cancelled_at = time.monotonic()
    outcome = client_app.send_task(CANCEL, args=[run_id],
                                   headers={"organization_id": configuration.organization_id}).get(timeout=30)
    assert outcome["found"] is True
    run = wait_for_run(data, configuration.organization_id, run_id, timeout=10)
    assert run.status == "cancelled"
    while server.in_flight:
        assert time.monotonic() - cancelled_at < 2.5, "calls in flight were not stopped within 2 s"
        time.sleep(0.05)
    results = data.results(configuration.organization_id, run_id)
    statuses = [r.status for r in results]
    assert len(results) == 200
    assert statuses.count("not_scored") >= 10 and statuses.count("cancelled") >= 150
    assert server.total_calls() < 40


def test_another_organization_can_neither_execute_nor_cancel_nor_read(client_app, workers, data, server) -> None:
    workers()
    victim = data.configuration(server.url + "/chat", 5)
    run_id = execute(client_app, victim)
    wait_for_run(data, victim.organization_id, run_id)
    attacker, attacker_user = data.organization("attacker")
    headers = {"organization_id": attacker, "user_id": attacker_user}
    stolen = client_app.send_task(EXECUTE, args=[victim.configuration_id], headers=headers)
    with pytest.raises(Exception, match="does not exist in this organization"):
        stolen.get(timeout=60)
    stolen_run = client_app.send_task(EXECUTE, args=[victim.configuration_id], kwargs={"test_run_id": run_id},
                                      headers=headers)
    with pytest.raises(Exception, match="does not exist"):
        stolen_run.get(timeout=60)
    assert client_app.send_task(CANCEL, args=[run_id], headers=headers).get(timeout=30)["found"] is False
    assert data.run(attacker, run_id) is None
    assert data.results(attacker, run_id) == []
    assert server.total_calls() == 5
    assert data.run(victim.organization_id, run_id).status == "completed"


def sweep(session_env: dict[str, str], stall_seconds: int) -> dict:
    completed = subprocess.run([sys.executable, "-m", "worker", "sweep", "--stall-seconds", str(stall_seconds)],
                               env={**os.environ, **session_env, **EXECUTION_ENV}, capture_output=True, text=True,
                               timeout=60, check=True)
    return json.loads(completed.stdout)


def test_the_sweeper_revives_a_run_whose_worker_and_messages_are_gone(client_app, session_env, broker, workers,
                                                                      data, server) -> None:
    server.configure(latency=0.5)
    first = workers()
    configuration = data.configuration(server.url + "/chat", 200, max_concurrency=20)
    run_id = execute(client_app, configuration)
    deadline = time.monotonic() + 30
    while data.result_count(configuration.organization_id, run_id) < 20 or server.in_flight < 10:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    _kill_tree(first)  # with tests leased and in flight
    prefix = session_env["REDIS_KEY_PREFIX"]
    broker.delete(f"{prefix}execution", f"{prefix}unacked", f"{prefix}unacked_index")  # the lane messages are gone
    assert sweep(session_env, 3600)["examined"] == 0, "a run with live leases was taken as stalled"
    time.sleep(10.5)  # EXECUTION_LEASE_SECONDS: the dead worker's leases expire
    report = sweep(session_env, 3600)
    assert report["requeued"] == [run_id], report
    workers()
    run = wait_for_run(data, configuration.organization_id, run_id)
    assert run.status == "completed" and data.result_count(configuration.organization_id, run_id) == 200


def test_the_sweeper_closes_a_cancelled_run_whose_worker_vanished(client_app, session_env, workers, data,
                                                                  server) -> None:
    server.configure(latency=30)
    first = workers()
    configuration = data.configuration(server.url + "/chat", 50, max_concurrency=5)
    run_id = execute(client_app, configuration)
    deadline = time.monotonic() + 30
    while server.in_flight < 5:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    _kill_tree(first)
    with tenant_session(configuration.organization_id, engine=data.engine) as db:
        assert cancel_test_run(db, uuid.UUID(run_id)).status == "cancelling"  # five leases still live
    time.sleep(10.5)
    report = sweep(session_env, 3600)
    assert report["closed"] == {run_id: "cancelled"}, (report, data.item_states(configuration.organization_id, run_id))
    run = data.run(configuration.organization_id, run_id)
    assert run.status == "cancelled" and run.counts["cancelled"] == 50


def _time_run(client_app, data: ExecutionData, configuration: Configuration) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    run_id = execute(client_app, configuration)
    wait_for_run(data, configuration.organization_id, run_id)
    return time.monotonic() - started


def test_a_small_run_is_not_starved_by_a_large_run_of_another_tenant(client_app, workers, data) -> None:
    workers(concurrency=4)
    with EndpointServer() as big_endpoint, EndpointServer() as small_endpoint:
        big_endpoint.configure(latency=1.0)
        small_endpoint.configure(latency=0.2)
        alone = sorted(_time_run(client_app, data, data.configuration(small_endpoint.url + "/chat", 20))
                       for _ in range(3))[1]
        big = data.configuration(big_endpoint.url + "/chat", 5000)
        big_run = execute(client_app, big)
        deadline = time.monotonic() + 30
        while data.result_count(big.organization_id, big_run) < 100:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        beside = _time_run(client_app, data, data.configuration(small_endpoint.url + "/chat", 20))
        assert data.run(big.organization_id, big_run).status == "running", "the large run ended too early"
        with tenant_session(big.organization_id, engine=data.engine) as db:
            cancel_test_run(db, uuid.UUID(big_run))
    print(f"20-test run alone {alone:.2f} s, beside a 5,000-test run {beside:.2f} s")
    assert beside <= 2 * alone


def test_an_answer_postgresql_cannot_store_is_stored_cleaned(client_app, workers, data, server) -> None:
    server.configure(answer="nul \x00 here")
    workers()
    configuration = data.configuration(server.url + "/chat", 5)
    run_id = execute(client_app, configuration)
    run = wait_for_run(data, configuration.organization_id, run_id, timeout=60)
    results = data.results(configuration.organization_id, run_id)
    assert run.status == "completed" and len(results) == 5
    assert {r.output for r in results} == {"nul \ufffd here"}
    assert set(server.calls.values()) == {1}


def test_a_test_claimed_too_often_is_stored_as_an_error_not_handed_on(client_app, workers, data, server) -> None:
    configuration = data.configuration(server.url + "/chat", 4)
    with tenant_session(configuration.organization_id, configuration.user_id, engine=data.engine) as db:
        run = start_run(db, organization_id=configuration.organization_id, user_id=configuration.user_id,
                        test_configuration_id=configuration.configuration_id, task_id=f"pre-{uuid.uuid4()}")
        poisoned = configuration.test_ids[0]
        db.execute(text("UPDATE test_run_item SET claims = :n WHERE test_run_id = :r AND test_id = :t"),
                   {"n": MAX_CLAIMS, "r": run.id, "t": poisoned})
    workers()
    run_id = execute(client_app, configuration, test_run_id=str(run.id))
    assert run_id == str(run.id)
    wait_for_run(data, configuration.organization_id, run_id, timeout=60)
    results = {str(r.test_id): r for r in data.results(configuration.organization_id, run_id)}
    assert len(results) == 4
    assert results[poisoned].status == "error" and results[poisoned].error_type == "internal"
    assert poisoned not in server.calls and server.total_calls() == 3


def test_the_sweeper_leaves_a_run_whose_execute_message_has_not_run_yet(client_app, session_env, workers, data,
                                                                        server) -> None:
    configuration = data.configuration(server.url + "/chat", 3)
    run_id = str(uuid.uuid4())
    with tenant_session(configuration.organization_id, configuration.user_id, engine=data.engine) as db:
        db.add(TestRun(id=uuid.UUID(run_id), organization_id=uuid.UUID(configuration.organization_id),
                       test_configuration_id=uuid.UUID(configuration.configuration_id), status="queued"))
    report = sweep(session_env, 0)  # every active run counts as stalled
    assert run_id not in report["closed"] and run_id not in report["requeued"]
    assert data.run(configuration.organization_id, run_id).status == "queued"
    workers()
    assert execute(client_app, configuration, test_run_id=run_id) == run_id
    run = wait_for_run(data, configuration.organization_id, run_id, timeout=60)
    assert run.status == "completed" and data.result_count(configuration.organization_id, run_id) == 3


def test_database_connections_killed_mid_run_cost_no_result_and_no_second_call(client_app, workers, data, server,
                                                                               migrated_database) -> None:
    server.configure(latency=0.3)
    workers()
    configuration = data.configuration(server.url + "/chat", 300, max_concurrency=30)
    run_id = execute(client_app, configuration)
    runtime_role = make_url(migrated_database.runtime_url).username
    killed = 0
    admin = create_engine(migrated_database.admin_url, poolclass=NullPool)
    try:
        for _ in range(3):
            time.sleep(1.0)
            with admin.connect() as connection:
                killed += len(connection.execute(text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :role"),
                    {"role": runtime_role}).all())
    finally:
        admin.dispose()
    assert killed, "no worker connection was there to kill"
    run = wait_for_run(data, configuration.organization_id, run_id, timeout=120)
    assert run.status == "completed" and data.result_count(configuration.organization_id, run_id) == 300
    assert set(server.calls.values()) == {1}, "a test was called twice after a database connection died"
