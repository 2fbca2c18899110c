"""The Celery bootsteps that run the health monitor, its watchdog and the shutdown bound in ``celery worker``."""

from __future__ import annotations

from typing import Any

from celery import Celery, bootsteps
from celery.signals import worker_shutting_down
from celery.worker import state as worker_state

from worker.delivery.bootsteps import install_delivery_recovery
from worker.health.monitor import HealthMonitor
from worker.health.shutdown_bound import bound_warm_shutdown
from worker.health.watchdog import BrokerLossWatchdog
from worker.settings import get_settings


class WorkerHealth(bootsteps.StartStopStep):
    """Worker-level step: creates the monitor, starts the watchdog after the pool, bounds warm shutdown."""

    label = "Health"
    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.monitor = HealthMonitor.from_settings(get_settings())
        self.watchdog = BrokerLossWatchdog(self.monitor)
        worker.health_monitor = self.monitor

    def start(self, worker: Any) -> None:
        hostname, monitor = worker.hostname, self.monitor

        def shutting_down(sender: Any = None, how: str | None = None, **_: Any) -> None:
            if sender != hostname:
                return
            monitor.on_shutdown()
            if how == "Warm":
                bound_warm_shutdown(worker, monitor.soft_shutdown_timeout)

        worker_shutting_down.connect(shutting_down, weak=False)
        self.watchdog.start()

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
    # Also a liveness signal: every worker lists the deliveries it holds under a key that expires when it dies.
    install_delivery_recovery(app)
