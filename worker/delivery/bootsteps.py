"""Run the delivery recovery thread in ``celery worker`` and let it see the consumer."""

from __future__ import annotations

from typing import Any

from celery import Celery, bootsteps

from worker.delivery.handback import HandBackOnShutdown
from worker.delivery.recovery import DeliveryRecovery
from worker.delivery.threadpool import track_thread_pool


class WorkerDeliveryRecovery(bootsteps.StartStopStep):
    """Worker-level step. The thread is never stopped by the worker's shutdown: tasks still running during a warm
    shutdown keep their tags listed until the process exits (kombu then restores what is left)."""

    label = "Delivery recovery"
    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        # Created here, before any consumer step starts, so that the consumer step always finds it.
        self.recovery = DeliveryRecovery(worker.app, worker.hostname)
        worker.delivery_recovery = self.recovery

    def start(self, worker: Any) -> None:
        # Before the consumer step starts consuming: every request the threads pool queues is then tracked.
        track_thread_pool(getattr(worker, "pool", None))
        self.recovery.start()


class ConsumerDeliveryRecovery(bootsteps.StartStopStep):
    """Consumer step: hands the (re)started consumer to the recovery thread."""

    label = "Delivery holdings"
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, consumer: Any) -> None:
        recovery = getattr(consumer.controller, "delivery_recovery", None)
        if recovery is not None:
            recovery.consumer = consumer


def install_delivery_recovery(app: Celery) -> None:
    """Add the steps to ``app`` (idempotent; they run only in ``celery worker``)."""
    if WorkerDeliveryRecovery not in app.steps["worker"]:
        app.steps["worker"].add(WorkerDeliveryRecovery)
    if ConsumerDeliveryRecovery not in app.steps["consumer"]:
        app.steps["consumer"].add(ConsumerDeliveryRecovery)
    if HandBackOnShutdown not in app.steps["consumer"]:
        app.steps["consumer"].add(HandBackOnShutdown)
