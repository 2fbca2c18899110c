"""A Celery consumer that checks protocol-2 task messages before Celery's strategy and Request read them.

Celery 5.6 indexes ``headers['id']``, unpacks the body into (args, kwargs, embed) and applies ``timelimit``
without checks; the errors end the consumer (a missing ``id`` even loops on "Connection to broker lost").
A malformed task message is dead-lettered and acknowledged instead, so it is never redelivered. Messages
with an unknown task name still go to Celery, which logs and discards them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery.worker.consumer import Consumer
from kombu.message import Message

from worker.message_guard.dead_letter import discard
from worker.message_guard.rules import body_problem, headers_problem


def task_message_problem(message: Message) -> str | None:
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
    return body_problem(body)


class GuardedConsumer(Consumer):
    def create_task_handler(self, *args: Any, **kwargs: Any) -> Callable[[Message], Any]:
        on_task_received = super().create_task_handler(*args, **kwargs)

        def on_checked_task_received(message: Message) -> Any:
            problem = task_message_problem(message)
            if problem is None:
                return on_task_received(message)
            discard(message.channel, getattr(message, "_raw", message.body), problem,
                    (message.delivery_info or {}).get("routing_key"))
            message.ack()
            return None

        return on_checked_task_received
