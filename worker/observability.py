"""Prometheus metrics of the worker, recorded from Celery signals and the execution result path (no Celery events:
they cost 25-35% of no-op throughput, docs/observability.md).

prometheus_client picks its value storage (in memory, or one mmap file per process in PROMETHEUS_MULTIPROC_DIR)
when it is first imported, so :func:`enable`, which the worker's main process calls from ``worker_init`` after
creating a fresh directory, makes it choose again. Prefork children inherit the directory and the metric
objects; the main process serves ``/metrics`` by merging every process's files. Producers never import it.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from celery.signals import (
    task_postrun,
    task_prerun,
    task_retry,
    worker_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

from worker.pids import pid_exists

log = logging.getLogger(__name__)

PREFIX = "tenant_worker"
#: Seconds a scrape waits for Redis before it reports the queue depth as unknown.
QUEUE_DEPTH_TIMEOUT = 1.0
_RUNTIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
OTHER_ORGANIZATION = "other"
NO_ORGANIZATION = "-"

# Every metric name this module exports (without the _bucket/_sum/_count/_created suffixes); the dashboard test
# checks the Grafana queries against it.
METRIC_NAMES = (
    f"{PREFIX}_tasks_total", f"{PREFIX}_task_runtime_seconds", f"{PREFIX}_task_retries_total",
    f"{PREFIX}_tasks_in_progress", f"{PREFIX}_queue_depth", f"{PREFIX}_queue_depth_up",
    f"{PREFIX}_execution_tests_called_total", f"{PREFIX}_execution_results_total",
    f"{PREFIX}_execution_endpoint_latency_seconds", f"{PREFIX}_execution_judge_tokens_total",
)


class _Metrics:
    def __init__(self, organizations: Sequence[str]) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.organizations = frozenset(organizations)
        self.tasks = Counter(f"{PREFIX}_tasks", "Tasks finished, by name, outcome (Celery state) and organization.",
                             ["task", "outcome", "organization"])
        self.runtime = Histogram(f"{PREFIX}_task_runtime_seconds", "Run time of task bodies.", ["task"],
                                 buckets=_RUNTIME_BUCKETS)
        self.retries = Counter(f"{PREFIX}_task_retries", "Task retries requested, by task name.", ["task"])
        # livesum: the gauges of pool processes that exited are dropped instead of freezing their last value.
        self.in_progress = Gauge(f"{PREFIX}_tasks_in_progress", "Tasks running now.", ["task"],
                                 multiprocess_mode="livesum")
        self.tests_called = Counter(f"{PREFIX}_execution_tests_called",
                                    "Tests of execution runs whose endpoint was called (at least one attempt).")
        self.results = Counter(f"{PREFIX}_execution_results", "Stored test results, by status.", ["status"])
        self.latency = Histogram(f"{PREFIX}_execution_endpoint_latency_seconds",
                                 "Endpoint latency of the stored test results.", buckets=_LATENCY_BUCKETS)
        self.judge_tokens = Counter(f"{PREFIX}_execution_judge_tokens", "Tokens LLM judges reported, by kind.",
                                    ["kind"])
        # Start times by task id and thread: threads pools run many tasks in one process at once, and a retry (same
        # task id) may start on another thread before the attempt that asked for it reaches task_postrun.
        self.started: dict[tuple[str, int], tuple[float, str, str]] = {}
        self.lock = threading.Lock()

    def organization(self, organization_id: object) -> str:
        if not self.organizations:
            return NO_ORGANIZATION
        return str(organization_id) if str(organization_id) in self.organizations else OTHER_ORGANIZATION


_metrics: _Metrics | None = None
_directory: str | None = None
_owner_pid: int | None = None
_port: int | None = None


def enabled() -> bool:
    return _metrics is not None


def enable(port: int, organizations: Sequence[str], app: Any = None, queues: Sequence[str] = (),
           address: str = "0.0.0.0") -> str:  # every interface: scraped from other pods
    """Create this start's multiprocess directory, the metrics, and serve them on ``port``; returns the directory.
    Must run before anything imports prometheus_client in this process."""
    global _metrics, _directory, _owner_pid
    # Per start and private: files of an earlier start (other pids, stale counters) must never be merged in.
    _directory = tempfile.mkdtemp(prefix="worker-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _directory
    _owner_pid = os.getpid()
    from prometheus_client import CollectorRegistry, start_http_server, values
    from prometheus_client.multiprocess import MultiProcessCollector

    # Celery's command line loads Flower's command plugin, which imports prometheus_client before any app code:
    # choose the value storage again now that the directory is set (metrics read values.ValueClass at creation).
    values.ValueClass = values.get_value_class()

    _metrics = _Metrics(organizations)
    registry = CollectorRegistry()
    registry.register(_DeadProcessSweeper(_directory))
    MultiProcessCollector(registry, path=_directory)
    if app is not None and queues:
        registry.register(QueueDepthCollector(app, queues))
    start_http_server(port, addr=address, registry=registry)
    global _port
    _port = port
    return _directory


class _DeadProcessSweeper:
    """Drops the live gauges of pool processes that died without running their shutdown hook (SIGKILL, OOM).
    Registered before the merging collector, so that a scrape never counts a dead child's running tasks."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def collect(self) -> Iterable[Any]:
        from prometheus_client.multiprocess import mark_process_dead

        for name in os.listdir(self.directory):
            if name.startswith("gauge_live") and name.endswith(".db"):
                pid = name.rsplit("_", 1)[-1][:-3]
                if pid.isdigit() and not pid_exists(int(pid)):
                    mark_process_dead(int(pid), self.directory)
        return []


class QueueDepthCollector:
    """Length of each consumed queue (with its priority sub-queues), read from Redis at scrape time in one pipelined
    round trip with a short socket timeout; on failure the depth is absent and ``queue_depth_up`` is 0."""

    def __init__(self, app: Any, queues: Sequence[str]) -> None:
        self.app = app
        self.queues = tuple(queues)
        self._client: Any = None

    def _redis(self) -> Any:
        if self._client is None:
            import redis

            conf = self.app.conf
            prefix = (conf.broker_transport_options or {}).get("global_keyprefix", "")
            ssl = dict(conf.broker_use_ssl) if conf.broker_use_ssl else {}
            # Its own small client: a scrape must not wait out the broker's (longer) timeouts nor take its pool.
            client = redis.Redis.from_url(conf.broker_url, socket_timeout=QUEUE_DEPTH_TIMEOUT,
                                          socket_connect_timeout=QUEUE_DEPTH_TIMEOUT, max_connections=2,
                                          retry_on_timeout=False, **ssl)
            self._client = (client, prefix)
        return self._client

    def _queues(self) -> tuple[str, ...]:
        # The queues the consumer really took (-Q in CELERY_WORKER_OPTS included); Celery selects them after
        # worker_init, so they are read at scrape time, the settings' list until then.
        try:
            selected = tuple(self.app.amqp.queues.consume_from or ())
        except AttributeError:
            selected = ()
        return selected or self.queues

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily

        depth = GaugeMetricFamily(f"{PREFIX}_queue_depth", "Messages waiting in each consumed queue (Redis).",
                                  labels=["queue"])
        up = GaugeMetricFamily(f"{PREFIX}_queue_depth_up", "1 when the last queue depth read from Redis worked.")
        try:
            client, prefix = self._redis()
            pipe = client.pipeline(transaction=False)
            # kombu's priority sub-queues: the queue name, then name + "\x06\x16" + step for steps 3, 6, 9.
            names = {queue: [queue] + [f"{queue}\x06\x16{step}" for step in (3, 6, 9)] for queue in self._queues()}
            for keys in names.values():
                for key in keys:
                    pipe.llen(prefix + key)
            lengths = iter(pipe.execute())
            for queue, keys in names.items():
                depth.add_metric([queue], sum(next(lengths) for _ in keys))
            up.add_metric([], 1)
            return [depth, up]
        except Exception as exc:  # a scrape must answer even when Redis does not
            log.debug("queue depth unavailable: %s", type(exc).__name__)
            up.add_metric([], 0)
            return [up]


def cleanup() -> None:
    """Remove this start's directory (main process, at shutdown)."""
    if _directory and os.getpid() == _owner_pid:
        shutil.rmtree(_directory, ignore_errors=True)


# -- Celery signals ------------------------------------------------------------------------------------------

@worker_init.connect(weak=False, dispatch_uid="worker.observability.start")
def _start(sender: Any = None, **_: object) -> None:
    from config import ConfigError
    from worker.settings import get_settings

    try:
        settings = get_settings()
    except ConfigError:
        return  # worker.app's own worker_init handler reports it in one line and exits 64
    if settings.metrics_port and not enabled():
        organizations = tuple(o for o in settings.metrics_organizations.split(",") if o)
        app = getattr(sender, "app", None)
        enable(settings.metrics_port, organizations, app, settings.celery_worker_queues)


@worker_ready.connect(weak=False, dispatch_uid="worker.observability.announce")
def _announce(**_: object) -> None:
    # Logged here, not in enable(): worker_init runs before Celery has set up logging.
    if _port is not None:
        log.info("metrics on port %d (multiprocess directory %s)", _port, _directory)


@worker_shutdown.connect(weak=False, dispatch_uid="worker.observability.cleanup")
def _cleanup(**_: object) -> None:
    cleanup()


@worker_process_shutdown.connect(weak=False, dispatch_uid="worker.observability.child_exit")
def _child_exit(pid: int | None = None, **_: object) -> None:
    if _directory:
        from prometheus_client.multiprocess import mark_process_dead

        mark_process_dead(pid or os.getpid(), _directory)


@task_prerun.connect(weak=False, dispatch_uid="worker.observability.prerun")
def _prerun(task_id: str | None = None, task: Any = None, **_: object) -> None:
    metrics = _metrics
    if metrics is None or task is None:
        return
    from worker.tenant.context import current_tenant

    # The tenant is set by now (worker.tenant.lifecycle connected first) and cleared before task_postrun here.
    organization = current_tenant().organization_id or getattr(task.request, "organization_id", None)
    metrics.in_progress.labels(task.name).inc()
    with metrics.lock:
        metrics.started[(task_id or "", threading.get_ident())] = (time.monotonic(), task.name,
                                                                   metrics.organization(organization))


@task_postrun.connect(weak=False, dispatch_uid="worker.observability.postrun")
def _postrun(task_id: str | None = None, task: Any = None, state: str | None = None, **_: object) -> None:
    metrics = _metrics
    if metrics is None or task is None:
        return
    with metrics.lock:
        started = metrics.started.pop((task_id or "", threading.get_ident()), None)
    if started is None:
        return
    began, name, organization = started
    metrics.in_progress.labels(name).dec()
    metrics.runtime.labels(name).observe(time.monotonic() - began)
    metrics.tasks.labels(name, (state or "unknown").lower(), organization).inc()


@task_retry.connect(weak=False, dispatch_uid="worker.observability.retry")
def _retry(sender: Any = None, **_: object) -> None:
    if _metrics is not None and sender is not None:
        _metrics.retries.labels(sender.name).inc()


# -- execution results ----------------------------------------------------------------------------------------

def observe_stored_results(results: Sequence[Any], stored_ids: Iterable[Any]) -> None:
    """Count the results :func:`worker.execution.store.store_results` wrote (``stored_ids``): a result whose test
    another worker finished first is not stored, and not counted."""
    metrics = _metrics
    if metrics is None:
        return
    stored = set(stored_ids)
    for result in results:
        if result.test_id not in stored:
            continue
        metrics.results.labels(result.status).inc()
        if result.attempts:
            metrics.tests_called.inc()
        if result.latency_ms is not None:
            metrics.latency.observe(result.latency_ms / 1000.0)
        for outcome in result.metrics or ():
            usage = outcome.get("token_usage") if isinstance(outcome, dict) else None
            for kind in ("prompt_tokens", "completion_tokens"):
                value = (usage or {}).get(kind)
                if isinstance(value, int) and value > 0:
                    metrics.judge_tokens.labels(kind.removesuffix("_tokens")).inc(value)
