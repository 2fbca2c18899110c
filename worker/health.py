"""Liveness and readiness files, the broker-loss bound and the warm-shutdown bound of a worker process.

``install_health_checks(app)`` adds two bootsteps (they only run inside ``celery worker``):

* ``<WORKER_HEALTH_DIR>/heartbeat`` is rewritten every ``WORKER_HEARTBEAT_INTERVAL`` seconds by a timer of the
  consumer's own event loop, while the consumer is connected and consuming. A stuck loop, a stopped
  (SIGSTOP'ed) or dead process, or a consumer that stopped, leaves it to age; ``entrypoint.sh healthcheck``
  compares its age with ``WORKER_HEARTBEAT_MAX_AGE`` (no Python, no broker).
* ``<dir>/ready`` exists while the worker is consuming (written from the running loop, removed when the
  connection is lost and at shutdown); ``<dir>/node`` holds the node name (for ``drain``).
* When the broker connection is lost, a watchdog thread keeps the heartbeat fresh for
  ``WORKER_BROKER_LOST_EXIT_AFTER`` seconds (a short outage does not restart every worker), then stops it and
  shuts the worker down with exit status 1, so a worker that cannot get its broker back never sits idle
  looking healthy. The same bound applies to the first connection at start-up.
* SIGTERM starts Celery's warm shutdown (no new messages, prefetched ones go back to the queue, running tasks
  finish). If tasks still run after ``CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT`` seconds, the worker sends itself
  SIGQUIT: Celery's cold shutdown stops them (exit status 1).

``python -m worker.health drain`` is the Kubernetes preStop hook (via ``entrypoint.sh drain``): it cancels this
node's consumers and waits until it runs no task, bounded by ``CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from celery import Celery, bootsteps
from celery.signals import worker_shutting_down
from celery.worker import state as worker_state

log = logging.getLogger("worker.health")

HEARTBEAT = "heartbeat"
READY = "ready"
NODE = "node"
EX_BROKER_LOST = 1
EX_SHUTDOWN_CUT = 1

STARTING, CONSUMING, LOST, STOPPING = "starting", "consuming", "lost", "stopping"


def _settings(app: Celery) -> Any:
    settings = getattr(app, "worker_settings", None)
    if settings is None:
        from worker.settings import get_settings

        settings = get_settings()
    return settings


class HealthMonitor:
    """The health files of one worker process and the state they reflect."""

    def __init__(self, directory: str | os.PathLike, interval: float, lost_exit_after: float,
                 soft_shutdown_timeout: float) -> None:
        self.directory = Path(directory)
        self.interval = float(interval)
        self.lost_exit_after = float(lost_exit_after)
        self.soft_shutdown_timeout = float(soft_shutdown_timeout)
        self.state = STARTING
        self.lost_since = time.monotonic()
        self.node = ""
        self.gave_up = False
        self._lock = threading.RLock()  # re-entrant: Celery's signal handlers run on the main thread
        self._stop = threading.Event()
        self._failed_writes: set[str] = set()
        self._watchdog: threading.Thread | None = None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.error("cannot create WORKER_HEALTH_DIR %s (%s): the healthcheck will report unhealthy",
                      self.directory, exc.strerror)
        # A heartbeat left by an earlier process must not make this one look alive.
        self._remove(HEARTBEAT)
        self._remove(READY)

    @classmethod
    def from_app(cls, app: Celery) -> HealthMonitor:
        settings = _settings(app)
        return cls(settings.worker_health_dir, settings.worker_heartbeat_interval,
                   settings.worker_broker_lost_exit_after, settings.celery_worker_soft_shutdown_timeout)

    # -- files ---------------------------------------------------------------------------------------
    def _write(self, name: str, content: str) -> bool:
        path = self.directory / name
        tmp = path.with_name(f".{name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(content)
            os.replace(tmp, path)  # atomic: a reader never sees half a file; mtime is the beat
        except OSError as exc:
            if name not in self._failed_writes:
                self._failed_writes.add(name)
                log.error("cannot write %s (%s): the healthcheck will report unhealthy", path, exc.strerror)
            return False
        self._failed_writes.discard(name)
        return True

    def _remove(self, name: str) -> None:
        try:
            (self.directory / name).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove %s (%s)", self.directory / name, exc.strerror)

    def beat(self) -> bool:
        payload = {"pid": os.getpid(), "node": self.node, "state": self.state, "time": time.time()}
        return self._write(HEARTBEAT, json.dumps(payload) + "\n")

    # -- transitions ----------------------------------------------------------------------------------
    def on_consuming(self, node: str) -> None:
        """The consumer's steps have started: connected, queues declared, consuming."""
        with self._lock:
            was_lost = self.state == LOST
            self.state = CONSUMING
            self.node = node
        if was_lost:
            log.info("broker connection is back: consuming again")
        self._write(NODE, node + "\n")

    def loop_beat(self, consumer: Any) -> None:
        """Timer callback in the consumer's event loop: the loop is alive, so is the consumer."""
        if self.state != CONSUMING:
            return
        connection = getattr(consumer, "connection", None)
        if connection is None or not getattr(connection, "connected", True):
            return
        self.beat()
        # Ready while consuming from at least one queue: `drain` (cancel_consumer) takes readiness away.
        task_consumer = getattr(consumer, "task_consumer", None)
        consuming = task_consumer is not None and bool(task_consumer.queues)
        ready = (self.directory / READY).exists()
        if consuming and not ready:
            self._write(READY, self.node + "\n")
        elif ready and not consuming:
            self._remove(READY)

    def on_connection_lost(self) -> None:
        with self._lock:
            if self.state != CONSUMING:
                return
            self.state = LOST
            self.lost_since = time.monotonic()
        self._remove(READY)
        log.warning("broker connection lost: still alive for WORKER_BROKER_LOST_EXIT_AFTER=%gs while reconnecting",
                    self.lost_exit_after)

    def on_shutdown(self) -> None:
        with self._lock:
            self.state = STOPPING
        self._stop.set()
        self._remove(READY)

    # -- watchdog: heartbeat while reconnecting, bounded --------------------------------------------------
    def start_watchdog(self) -> None:
        if self._watchdog is None:
            self._watchdog = threading.Thread(target=self._watch, name="health-watchdog", daemon=True)
            self._watchdog.start()

    def _watch(self) -> None:
        tick = min(1.0, self.interval)
        last_beat = 0.0
        while not self._stop.wait(tick):
            with self._lock:
                current, since = self.state, self.lost_since
            if current not in (STARTING, LOST) or self.gave_up:
                continue
            now = time.monotonic()
            if self.lost_exit_after and now - since >= self.lost_exit_after:
                self._give_up(now - since)
            elif current == LOST and now - last_beat >= self.interval:
                self.beat()
                last_beat = now

    def _give_up(self, elapsed: float) -> None:
        self.gave_up = True
        self._remove(READY)
        self._remove(HEARTBEAT)
        what = "reach" if self.state == STARTING else "get back"
        log.critical("could not %s the broker for %.0fs (WORKER_BROKER_LOST_EXIT_AFTER=%gs): heartbeat stopped, "
                     "shutting down with status %d", what, elapsed, self.lost_exit_after, EX_BROKER_LOST)
        # Checked by Celery between connection retries (maybe_shutdown) and by its main loop.
        worker_state.should_stop = EX_BROKER_LOST

    # -- warm shutdown bound ---------------------------------------------------------------------------
    def on_warm_shutdown(self, worker: Any) -> None:
        """Called from Celery's SIGTERM/SIGINT handler: bound the warm shutdown."""
        self.on_shutdown()
        timeout = self.soft_shutdown_timeout
        timer = threading.Timer(timeout, self._cold_shutdown, args=(worker, timeout))
        timer.name = "shutdown-bound"
        timer.daemon = True
        timer.start()

    @staticmethod
    def _cold_shutdown(worker: Any, timeout: float) -> None:
        log.warning("tasks still running %gs after the warm shutdown began (CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT): "
                    "cold shutdown, the running tasks are stopped", timeout)
        # The bound was already granted during the warm shutdown: no second soft-shutdown wait.
        worker.app.conf.worker_soft_shutdown_timeout = 0.0
        worker.app.conf.worker_enable_soft_shutdown_on_idle = False
        # Tasks were cut short: the process must not report a clean exit.
        worker.exitcode = EX_SHUTDOWN_CUT
        os.kill(os.getpid(), signal.SIGQUIT)


class WorkerHealth(bootsteps.StartStopStep):
    """Worker-level step: creates the monitor, starts the watchdog after the pool, bounds warm shutdown."""

    label = "Health"
    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.monitor = HealthMonitor.from_app(worker.app)
        worker.health_monitor = self.monitor

    def start(self, worker: Any) -> None:
        hostname, monitor = worker.hostname, self.monitor

        def shutting_down(sender: Any = None, how: str | None = None, **_: Any) -> None:
            if sender == hostname and how == "Warm":
                monitor.on_warm_shutdown(worker)
            elif sender == hostname:
                monitor.on_shutdown()

        worker_shutting_down.connect(shutting_down, weak=False)
        monitor.lost_since = time.monotonic()
        monitor.start_watchdog()

    def stop(self, worker: Any) -> None:
        self.monitor.on_shutdown()

    def terminate(self, worker: Any) -> None:
        self.monitor.on_shutdown()


class ConsumerHealth(bootsteps.StartStopStep):
    """Consumer step, started once consuming has begun (again after every reconnection)."""

    label = "Health heartbeat"
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, consumer: Any, **kwargs: Any) -> None:
        super().__init__(consumer, **kwargs)
        self.tref: Any = None

    def _monitor(self, consumer: Any) -> HealthMonitor | None:
        return getattr(consumer.controller, "health_monitor", None)

    def start(self, consumer: Any) -> None:
        monitor = self._monitor(consumer)
        if monitor is None:
            return
        monitor.on_consuming(consumer.hostname)
        # First beat (and the ready marker) from the running loop, then every interval.
        consumer.timer.call_after(0.0, monitor.loop_beat, (consumer,))
        self.tref = consumer.timer.call_repeatedly(monitor.interval, monitor.loop_beat, (consumer,))

    def _cancel(self) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    def stop(self, consumer: Any) -> None:
        # Called when the connection is lost (the blueprint restarts, still RUNning) and at shutdown.
        self._cancel()
        monitor = self._monitor(consumer)
        if monitor is None:
            return
        shutting_down = bool(worker_state.should_stop or worker_state.should_terminate)
        if consumer.blueprint.state == bootsteps.RUN and not shutting_down:
            monitor.on_connection_lost()
        else:
            monitor.on_shutdown()

    def shutdown(self, consumer: Any) -> None:
        self._cancel()
        monitor = self._monitor(consumer)
        if monitor is not None:
            monitor.on_shutdown()


def install_health_checks(app: Celery) -> None:
    """Add the health bootsteps to ``app`` (idempotent; they run only in ``celery worker``)."""
    if WorkerHealth not in app.steps["worker"]:
        app.steps["worker"].add(WorkerHealth)
    if ConsumerHealth not in app.steps["consumer"]:
        app.steps["consumer"].add(ConsumerHealth)


# -- drain (preStop) -----------------------------------------------------------------------------------
def _node_name(directory: Path, configured: str) -> str:
    try:
        node = (directory / NODE).read_text().strip()
    except OSError:
        node = ""
    if node:
        return node
    from celery.utils.nodenames import default_nodename, host_format

    return host_format(default_nodename(configured or None))


def drain(timeout: float | None = None) -> int:
    """Stop this node consuming and wait until it runs no task; 0 when drained in time."""
    from worker.app import app

    settings = _settings(app)
    timeout = float(settings.celery_worker_soft_shutdown_timeout if timeout is None else timeout)
    directory = Path(settings.worker_health_dir)
    node = _node_name(directory, settings.celery_worker_hostname)
    deadline = time.monotonic() + timeout
    replies = app.control.inspect(destination=[node], timeout=5.0).active_queues() or {}
    if node not in replies:
        print(f"drain: worker {node} does not answer; nothing to drain", file=sys.stderr)
        return 1
    queues = sorted({queue["name"] for queue in replies[node]})
    for queue in queues:
        app.control.cancel_consumer(queue, destination=[node], reply=True, timeout=5.0)
    try:
        (directory / READY).unlink()
    except OSError:
        pass
    print(f"drain: {node} stopped consuming {', '.join(queues) or '(no queues)'}; waiting up to {timeout:g}s "
          "for its running tasks", file=sys.stderr)
    while True:
        active = (app.control.inspect(destination=[node], timeout=2.0).active() or {}).get(node)
        if active == []:
            print(f"drain: {node} runs no task", file=sys.stderr)
            return 0
        if time.monotonic() >= deadline:
            count = "an unknown number of" if active is None else str(len(active))
            print(f"drain: {node} still runs {count} task(s) after {timeout:g}s", file=sys.stderr)
            return 1
        time.sleep(1.0)


def main(argv: list[str]) -> int:
    if argv[:1] == ["drain"]:
        return drain(float(argv[1]) if len(argv) > 1 else None)
    print("usage: python -m worker.health drain [TIMEOUT]", file=sys.stderr)
    return 64


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
