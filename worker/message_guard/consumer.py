"""A Celery consumer that checks protocol-2 task messages before Celery's strategy and Request read them.

Celery 5.6 indexes ``headers['id']``, unpacks the body into (args, kwargs, embed) and applies ``timelimit``
without checks; the errors end the consumer (a missing ``id`` even loops on "Connection to broker lost").
A malformed task message is dead-lettered and acknowledged instead, so it is never redelivered. Messages
with an unknown task name still go to Celery, which logs and discards them.

With TENANT_SIGNING_KEY set, a message whose ``tenant_signature`` is missing or does not verify is handled the
same way: dead-lettered with the reason, acknowledged, never run and never retried (worker/tenant/signing.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery.worker.consumer import Consumer
from kombu.message import Message

from worker.message_guard.dead_letter import discard
from worker.message_guard.rules import body_problem, headers_problem
from worker.tenant.signing import TenantSigner


def task_message_problem(message: Message, signer: TenantSigner | None = None) -> str | None:
    headers = message.headers
    if not isinstance(headers, dict) or "task" not in headers:
        return "not a protocol-2 task message (headers.task is missing)"
    problem = headers_problem(headers)
    if problem:
        return problem
    try:
        body = message.decode()  # also enforces accept_content; Celery reuses the decoded payload
    except Exception as exc:  # any serializer error means the body cannot be run
        return f"body cannot be decoded as {message.content_type}: {type(exc).__name__}: {exc}"
    problem = body_problem(body)
    if problem is None and signer is not None:
        problem = signer.problem(headers, message.body)  # the serialized bytes the publisher signed
    return problem


class GuardedConsumer(Consumer):
    def create_task_handler(self, *args: Any, **kwargs: Any) -> Callable[[Message], Any]:
        on_task_received = super().create_task_handler(*args, **kwargs)
        signer = getattr(self.app.amqp, "tenant_signer", None)

        def on_checked_task_received(message: Message) -> Any:
            problem = task_message_problem(message, signer)
            if problem is None:
                return on_task_received(message)
            discard(message.channel, getattr(message, "_raw", message.body), problem,
                    (message.delivery_info or {}).get("routing_key"))
            message.ack()
            return None

        return on_checked_task_received
