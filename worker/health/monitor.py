"""The health state of one worker process and the files that show it (heartbeat, ready marker, node name)."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any

from worker.health.files import HEARTBEAT, NODE, READY, HealthFiles

log = logging.getLogger("worker.health")

STARTING, CONSUMING, LOST, STOPPING = "starting", "consuming", "lost", "stopping"


class HealthMonitor:
    """State transitions (called by the bootsteps) and the beats they allow."""

    def __init__(self, directory: str | os.PathLike, interval: float, lost_exit_after: float,
                 soft_shutdown_timeout: float) -> None:
        self.files = HealthFiles(directory)
        self.directory = self.files.directory
        self.interval = float(interval)
        self.lost_exit_after = float(lost_exit_after)
        self.soft_shutdown_timeout = float(soft_shutdown_timeout)
        self.state = STARTING
        self.lost_since = time.monotonic()
        self.node = ""
        self.lock = threading.RLock()  # re-entrant: Celery's signal handlers run on the main thread
        self.stopped = threading.Event()
        self.files.create_directory()
        # A heartbeat left by an earlier process must not make this one look alive.
        self.files.remove(HEARTBEAT)
        self.files.remove(READY)

    @classmethod
    def from_settings(cls, settings: Any) -> HealthMonitor:
        return cls(settings.worker_health_dir, settings.worker_heartbeat_interval,
                   settings.worker_broker_lost_exit_after, settings.celery_worker_soft_shutdown_timeout)

    def beat(self) -> bool:
        payload = {"pid": os.getpid(), "node": self.node, "state": self.state, "time": time.time()}
        return self.files.write(HEARTBEAT, json.dumps(payload) + "\n")

    def stop_beating(self) -> None:
        """The heartbeat and the ready marker go: the healthcheck reports unhealthy from now on."""
        self.files.remove(READY)
        self.files.remove(HEARTBEAT)

    # -- transitions ----------------------------------------------------------------------------------
    def on_consuming(self, node: str) -> None:
        """The consumer's steps have started: connected, queues declared, consuming."""
        with self.lock:
            was_lost = self.state == LOST
            self.state = CONSUMING
            self.node = node
        if was_lost:
            log.info("broker connection is back: consuming again")
        self.files.write(NODE, node + "\n")

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
        ready = self.files.exists(READY)
        if consuming and not ready:
            self.files.write(READY, self.node + "\n")
        elif ready and not consuming:
            self.files.remove(READY)

    def on_connection_lost(self) -> None:
        with self.lock:
            if self.state != CONSUMING:
                return
            self.state = LOST
            self.lost_since = time.monotonic()
        self.files.remove(READY)
        log.warning("broker connection lost: still alive for WORKER_BROKER_LOST_EXIT_AFTER=%gs while reconnecting",
                    self.lost_exit_after)

    def on_shutdown(self) -> None:
        with self.lock:
            self.state = STOPPING
        self.stopped.set()
        self.files.remove(READY)
