"""Malformed broker messages: discard and dead-letter them in the worker, refuse them at publish time.

See docs/reliability.md, "Malformed messages".
"""

from __future__ import annotations

from urllib.parse import urlsplit

from celery import Celery

from worker.message_guard.dead_letter import DEAD_LETTER_KEY, DEAD_LETTER_LIMIT
from worker.message_guard.publish import UnpublishableMessageError

GUARDED_TRANSPORT = "worker.message_guard.transport:GuardedTransport"
GUARDED_CONSUMER = "worker.message_guard.consumer:GuardedConsumer"

__all__ = ["DEAD_LETTER_KEY", "DEAD_LETTER_LIMIT", "UnpublishableMessageError", "install_message_guard"]


def install_message_guard(app: Celery) -> None:
    """Call before the app connects or publishes (create_app does)."""
    from worker.message_guard.publish import GuardedAMQP

    if "amqp" in app.__dict__:
        raise RuntimeError("install_message_guard must run before app.amqp is first used")
    scheme = urlsplit(app.conf.broker_url or "").scheme
    if scheme not in ("redis", "rediss"):
        raise RuntimeError(f"the message guard needs a redis:// or rediss:// broker, not {scheme}://")
    if scheme == "rediss" and not app.conf.broker_use_ssl:
        # Naming the transport ourselves skips kombu's rediss:// default of TLS; never connect in clear text.
        raise RuntimeError("a rediss:// broker needs broker_use_ssl when the message guard selects the transport")
    app.amqp_cls = GuardedAMQP
    app.conf.broker_transport = GUARDED_TRANSPORT
    app.conf.worker_consumer = GUARDED_CONSUMER
