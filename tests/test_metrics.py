"""Prometheus metrics of a real worker process (prefork and threads), scraped over HTTP from its /metrics port."""

from __future__ import annotations

import time
import urllib.request

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.test_grafana_dashboard import exported_name
from worker.dev.services import free_port
from worker.observability import METRIC_NAMES

pytestmark = pytest.mark.timeout(180)

TIMEOUT = 60
ORG = "0b7d4f6e-1c2a-4e58-9a41-6c3f2e1d0a01"
OTHER_ORG = "5e2c9a17-3f4b-4d6e-8a1c-9b0d2e3f4a5b"


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics by (name, sorted labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        body = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def scrape_when(port: int, name: str, labels: dict[str, str], expected: float) -> dict:  # type: ignore[type-arg]
    """Scrape until a counter reaches ``expected`` (task_postrun runs just after the result is stored)."""
    deadline = time.monotonic() + 20
    while True:
        samples = scrape(port)
        if value(samples, name, **labels) >= expected or time.monotonic() > deadline:
            return samples
        time.sleep(0.1)


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_task_counters_runtime_retries_and_queue_depth(worker_factory, client_app, pool, request) -> None:
    port = free_port()
    worker = worker_factory(pool=pool, concurrency=2, env={"METRICS_PORT": str(port), "METRICS_ORGANIZATIONS": ORG})
    request.addfinalizer(worker.stop)  # a worker left running would take the next test's tasks
    results = [client_app.send_task("tests.probe.tenant", headers={"organization_id": ORG}) for _ in range(3)]
    results.append(client_app.send_task("tests.probe.tenant", headers={"organization_id": OTHER_ORG}))
    for result in results:
        result.get(TIMEOUT)
    retried = client_app.send_task("tests.probe.retry_once", headers={"organization_id": ORG})
    retried.get(TIMEOUT)
    failing = client_app.send_task("tests.probe.always_fails", headers={"organization_id": ORG})
    with pytest.raises(Exception, match="attempt 2"):
        failing.get(TIMEOUT)

    total = "tenant_worker_tasks_total"
    samples = scrape_when(port, total, {"task": "tests.probe.always_fails", "outcome": "failure",
                                        "organization": ORG}, 1)
    samples = scrape_when(port, total, {"task": "tests.probe.retry_once", "outcome": "success",
                                        "organization": ORG}, 1)
    tasks = {labels: count for (name, labels), count in samples.items() if name == total and count}
    assert tasks == {
        (("organization", ORG), ("outcome", "success"), ("task", "tests.probe.tenant")): 3.0,
        (("organization", "other"), ("outcome", "success"), ("task", "tests.probe.tenant")): 1.0,
        (("organization", ORG), ("outcome", "retry"), ("task", "tests.probe.retry_once")): 1.0,
        (("organization", ORG), ("outcome", "success"), ("task", "tests.probe.retry_once")): 1.0,
        (("organization", ORG), ("outcome", "retry"), ("task", "tests.probe.always_fails")): 2.0,
        (("organization", ORG), ("outcome", "failure"), ("task", "tests.probe.always_fails")): 1.0,
    }, tasks
    assert value(samples, "tenant_worker_task_retries_total", task="tests.probe.retry_once") == 1
    assert value(samples, "tenant_worker_task_retries_total", task="tests.probe.always_fails") == 2
    assert value(samples, "tenant_worker_task_runtime_seconds_count", task="tests.probe.tenant") == 4
    assert value(samples, "tenant_worker_task_runtime_seconds_bucket", task="tests.probe.tenant", le="+Inf") == 4
    assert value(samples, "tenant_worker_task_runtime_seconds_count", task="tests.probe.always_fails") == 3
    assert value(samples, "tenant_worker_tasks_in_progress", task="tests.probe.tenant") == 0
    assert value(samples, "tenant_worker_queue_depth_up") == 1
    assert f"metrics on port {port}" in worker.log()
    assert ("tenant_worker_queue_depth", (("queue", "celery"),)) in samples
    # METRIC_NAMES, which the dashboard test checks the Grafana queries against, is what the worker exports.
    exported = {exported_name(name) for name, _ in samples if name.startswith("tenant_worker_")}
    assert exported == set(METRIC_NAMES) - {"tenant_worker_execution_judge_tokens_total",
                                            "tenant_worker_execution_results_total"}, "(labelled, none yet)"


def test_in_progress_counts_a_running_task_and_queue_depth_counts_waiting_ones(worker_factory, client_app,
                                                                              request) -> None:
    port = free_port()
    worker = worker_factory(pool="prefork", concurrency=1, env={"METRICS_PORT": str(port)},
                            extra_args=("--prefetch-multiplier", "1"))
    request.addfinalizer(worker.stop)
    running = client_app.send_task("tests.probe.sleep", args=[3])
    waiting = [client_app.send_task("tests.probe.sleep", args=[0]) for _ in range(3)]
    samples = scrape_when(port, "tenant_worker_tasks_in_progress", {"task": "tests.probe.sleep"}, 1)
    assert value(samples, "tenant_worker_tasks_in_progress", task="tests.probe.sleep") == 1
    # The others wait in Redis, but for at most one the worker may have reserved (prefetch multiplier 1).
    assert value(samples, "tenant_worker_queue_depth", queue="celery") in (2, 3)
    running.get(TIMEOUT)
    for result in waiting:
        result.get(TIMEOUT)
    samples = scrape_when(port, "tenant_worker_tasks_total", {"task": "tests.probe.sleep", "outcome": "success",
                                                              "organization": "-"}, 4)
    assert value(samples, "tenant_worker_tasks_total", task="tests.probe.sleep", outcome="success",
                 organization="-") == 4
    assert value(samples, "tenant_worker_tasks_in_progress", task="tests.probe.sleep") == 0
    assert value(samples, "tenant_worker_queue_depth", queue="celery") == 0


def test_queue_depth_follows_the_queues_the_worker_consumes(worker_factory, client_app, request) -> None:
    port = free_port()
    worker = worker_factory(pool="threads", concurrency=1, env={"METRICS_PORT": str(port)},
                            extra_args=("--queues", "execution"))  # overrides the fixture's celery,execution
    request.addfinalizer(worker.stop)
    samples = scrape(port)
    depths = {labels for name, labels in samples if name == "tenant_worker_queue_depth"}
    assert depths == {(("queue", "execution"),)}, depths


def test_metrics_are_off_by_default(worker_factory, client_app, request) -> None:
    worker = worker_factory(pool="threads", concurrency=1)
    request.addfinalizer(worker.stop)
    client_app.send_task("tests.probe.tenant", headers={"organization_id": ORG}).get(TIMEOUT)
    assert "metrics on port" not in worker.log()
    listening = [c for c in psutil.Process(worker.proc.pid).net_connections("tcp") if c.status == psutil.CONN_LISTEN]
    assert listening == [], "no port is opened unless METRICS_PORT asks for one"


def test_a_killed_pool_process_leaves_no_task_in_progress(worker_factory, client_app, request) -> None:
    """A child SIGKILLed mid-task never runs task_postrun: its live gauge file is dropped at the next scrape."""
    port = free_port()
    worker = worker_factory(pool="prefork", concurrency=1, env={"METRICS_PORT": str(port)})
    request.addfinalizer(worker.stop)
    result = client_app.send_task("tests.probe.sleep", args=[30])
    samples = scrape_when(port, "tenant_worker_tasks_in_progress", {"task": "tests.probe.sleep"}, 1)
    assert value(samples, "tenant_worker_tasks_in_progress", task="tests.probe.sleep") == 1
    children = psutil.Process(worker.proc.pid).children()
    assert len(children) == 1
    children[0].kill()
    client_app.control.revoke(result.id)  # the redelivered message must not start the sleep again
    with pytest.raises(Exception):  # noqa: B017 - WorkerLostError or revoked: either ends the task here
        result.get(TIMEOUT)
    deadline = time.monotonic() + 20
    while (value(scrape(port), "tenant_worker_tasks_in_progress", task="tests.probe.sleep") != 0
           and time.monotonic() < deadline):
        time.sleep(0.2)
    assert value(scrape(port), "tenant_worker_tasks_in_progress", task="tests.probe.sleep") == 0
