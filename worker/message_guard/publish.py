"""Refuse, at publish time, task headers that a worker would have to discard; sign tenants when a key is set.

A ``before_task_publish`` handler cannot refuse: Celery's signal dispatch logs and swallows a receiver's
exception and publishes anyway. The check therefore wraps the AMQP sender that ``send_task`` and
``apply_async`` call, after the caller's ``headers=`` are merged over Celery's own.

Signing must come later still: Celery's sender fires ``before_task_publish`` (where worker/tenant/propagation.py
fills in the tenant) only just before ``producer.publish``. So the sender gets a producer stand-in whose
``publish`` serializes the body, signs the final headers and body, and hands both to the real producer.
Every task message goes through this sender: ``apply_async``, ``send_task``, retries, chain steps, callbacks,
group members and chord parts (see worker/tenant/signing.py).
"""

from __future__ import annotations

from typing import Any

from celery.app.amqp import AMQP
from kombu.serialization import dumps
from kombu.utils.objects import cached_property

from worker.message_guard.rules import body_problem, headers_problem
from worker.tenant.signing import SIGNATURE_HEADER, TenantSigner


class UnpublishableMessageError(ValueError):
    """A task message that a worker would discard as malformed."""


def refuse_unpublishable(name: str, headers: dict[str, Any], body: Any) -> None:
    problem = headers_problem(headers) or body_problem(body)
    if problem:
        raise UnpublishableMessageError(f"refusing to publish task {name!r}: {problem}")


class SigningProducer:
    """The producer as Celery's sender sees it: signs the one task message it was made for, as it is published.

    Other messages sent through it (the ``task-sent`` event) pass unchanged: only ``headers`` that are the task
    message's own header dict are signed.
    """

    def __init__(self, producer: Any, task_headers: dict[str, Any], signer: TenantSigner) -> None:
        self._producer = producer
        self._task_headers = task_headers
        self._signer = signer

    def publish(self, body: Any, headers: dict[str, Any] | None = None, serializer: str | None = None,
                content_type: str | None = None, content_encoding: str | None = None, **options: Any) -> Any:
        if headers is not None and headers is self._task_headers:
            if not content_type:
                # Serialize here, as kombu would, so that the signature covers the exact bytes the worker reads.
                content_type, content_encoding, body = dumps(body, serializer=serializer or self._producer.serializer)
            headers[SIGNATURE_HEADER] = self._signer.sign(headers, body)
        return self._producer.publish(body, headers=headers, serializer=serializer, content_type=content_type,
                                      content_encoding=content_encoding, **options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)


class GuardedAMQP(AMQP):
    # Set on a per-app subclass by install_message_guard; None: no signing, no verification, no cost.
    tenant_signer: TenantSigner | None = None

    @cached_property
    def send_task_message(self):  # type: ignore[no-untyped-def]
        send = self._create_task_sender()
        signer = self.tenant_signer

        def send_checked_task_message(producer, name, message, headers=None, **options):  # type: ignore[no-untyped-def]
            refuse_unpublishable(name, {**message.headers, **(headers or {})}, message.body)
            if signer is not None:
                producer = SigningProducer(producer, message.headers, signer)
            return send(producer, name, message, headers=headers, **options)

        return send_checked_task_message
