"""While the broker is away, keep the heartbeat fresh for a bounded time, then stop the worker.

A short outage must not restart every worker, and a worker that cannot get its broker back must not sit idle
looking healthy. The same bound applies to the first connection at start-up.
"""

from __future__ import annotations

import logging
import threading
import time

from celery.worker import state as worker_state

from worker.health.monitor import LOST, STARTING, HealthMonitor

log = logging.getLogger("worker.health")

EX_BROKER_LOST = 1


class BrokerLossWatchdog:
    """A daemon thread watching one monitor; beats while LOST, gives up after ``lost_exit_after`` seconds."""

    def __init__(self, monitor: HealthMonitor) -> None:
        self.monitor = monitor
        self.gave_up = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self.monitor.lost_since = time.monotonic()
            self._thread = threading.Thread(target=self._watch, name="health-watchdog", daemon=True)
            self._thread.start()

    def _watch(self) -> None:
        monitor = self.monitor
        tick = min(1.0, monitor.interval)
        last_beat = 0.0
        while not monitor.stopped.wait(tick):
            with monitor.lock:
                current, since = monitor.state, monitor.lost_since
            if current not in (STARTING, LOST) or self.gave_up:
                continue
            now = time.monotonic()
            if monitor.lost_exit_after and now - since >= monitor.lost_exit_after:
                self._give_up(current, now - since)
            elif current == LOST and now - last_beat >= monitor.interval:
                monitor.beat()
                last_beat = now

    def _give_up(self, state: str, elapsed: float) -> None:
        self.gave_up = True
        self.monitor.stop_beating()
        what = "reach" if state == STARTING else "get back"
        log.critical("could not %s the broker for %.0fs (WORKER_BROKER_LOST_EXIT_AFTER=%gs): heartbeat stopped, "
                     "shutting down with status %d", what, elapsed, self.monitor.lost_exit_after, EX_BROKER_LOST)
        # Checked by Celery between connection retries (maybe_shutdown) and by its main loop.
        worker_state.should_stop = EX_BROKER_LOST
