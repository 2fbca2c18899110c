"""Refuse, at publish time, task headers that a worker would have to discard.

A ``before_task_publish`` handler cannot do this: Celery's signal dispatch logs and swallows a receiver's
exception and publishes anyway. The check therefore wraps the AMQP sender that ``send_task`` and
``apply_async`` call, after the caller's ``headers=`` are merged over Celery's own.
"""

from __future__ import annotations

from typing import Any

from celery.app.amqp import AMQP
from kombu.utils.objects import cached_property

from worker.message_guard.rules import body_problem, headers_problem


class UnpublishableMessageError(ValueError):
    """A task message that a worker would discard as malformed."""


def refuse_unpublishable(name: str, headers: dict[str, Any], body: Any) -> None:
    problem = headers_problem(headers) or body_problem(body)
    if problem:
        raise UnpublishableMessageError(f"refusing to publish task {name!r}: {problem}")


class GuardedAMQP(AMQP):
    @cached_property
    def send_task_message(self):  # type: ignore[no-untyped-def]
        send = self._create_task_sender()

        def send_checked_task_message(producer, name, message, headers=None, **options):  # type: ignore[no-untyped-def]
            refuse_unpublishable(name, {**message.headers, **(headers or {})}, message.body)
            return send(producer, name, message, headers=headers, **options)

        return send_checked_task_message
