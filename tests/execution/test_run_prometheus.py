"""An execution run moves the worker's Prometheus execution counters (scraped over HTTP from /metrics)."""

from __future__ import annotations

import pytest

from tests.execution.test_runs import EXECUTION_ENV, data, execute, wait_for_run  # noqa: F401 - fixture
from tests.support.endpoint_server import EndpointServer
from tests.test_metrics import scrape_when, value
from worker.dev.services import free_port

pytestmark = pytest.mark.timeout(300)

ECHOES = {"name": "echoes", "kind": "contains", "parameters": {"value": "echo:"}}
NEVER = {"name": "never", "kind": "regex", "parameters": {"pattern": "^refund$"}}


def test_a_run_counts_called_tests_results_by_status_and_latency(session_env, run_dir, client_app, data,  # noqa: F811
                                                                 request) -> None:
    from tests.conftest import start_worker_process

    port = free_port()
    worker = start_worker_process({**session_env, **EXECUTION_ENV, "METRICS_PORT": str(port)}, run_dir,
                                  "prefork", 2, ping_app=client_app)
    request.addfinalizer(worker.stop)
    with EndpointServer() as server:
        passing = data.configuration(server.url + "/chat", 7, metrics=(ECHOES,))
        failing = data.configuration(server.url + "/chat", 5, metrics=(ECHOES, NEVER))
        refused = data.configuration(server.url + "/chat", 3)
        server.configure(status=400)
        for configuration in (passing, failing):
            server.configure()
            wait_for_run(data, configuration.organization_id, execute(client_app, configuration))
        server.configure(status=400)
        wait_for_run(data, refused.organization_id, execute(client_app, refused))
        calls = server.total_calls()

    results = "tenant_worker_execution_results_total"
    samples = scrape_when(port, results, {"status": "error"}, 3)
    assert value(samples, results, status="pass") == 7
    assert value(samples, results, status="fail") == 5
    assert value(samples, results, status="error") == 3
    assert value(samples, "tenant_worker_execution_tests_called_total") == 15 == calls
    assert value(samples, "tenant_worker_execution_endpoint_latency_seconds_count") == 15
    # The lane tasks and the start tasks of the three runs were counted as tasks too.
    assert value(samples, "tenant_worker_tasks_total", task="rhesis.backend.tasks.execute_test_configuration",
                 outcome="success", organization="-") == 3


def test_a_run_with_an_llm_judge_counts_its_tokens(session_env, run_dir, client_app, data,  # noqa: F811
                                                    request) -> None:
    from tests.conftest import start_worker_process
    from tests.support.judge_servers import GeminiServer
    from tests.support.secret_watch import register_secret

    key = "gm-key-metrics-5e1f0a9b3c7d2e4f"
    register_secret("test Gemini key (metrics)", key)
    port = free_port()
    with GeminiServer(key) as judge, EndpointServer() as server:
        worker = start_worker_process({**session_env, **EXECUTION_ENV, "METRICS_PORT": str(port),
                                       "GEMINI_API_KEY": key, "GEMINI_BASE_URL": judge.url}, run_dir,
                                      "prefork", 2, ping_app=client_app)
        request.addfinalizer(worker.stop)
        judged = data.configuration(server.url + "/chat", 4, metrics=(
            {"name": "helpful", "kind": "llm_judge", "evaluation_prompt": "Does it answer the question?"},))
        wait_for_run(data, judged.organization_id, execute(client_app, judged))
        calls = len(judge.requests)
    tokens = "tenant_worker_execution_judge_tokens_total"
    samples = scrape_when(port, tokens, {"kind": "completion"}, 30 * calls)
    assert calls == 4
    assert value(samples, tokens, kind="prompt") == 120 * calls
    assert value(samples, tokens, kind="completion") == 30 * calls
    assert value(samples, "tenant_worker_execution_results_total", status="pass") == 4
