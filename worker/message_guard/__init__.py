"""Malformed broker messages: discard and dead-letter them in the worker, refuse them at publish time.

See docs/reliability.md, "Malformed messages".
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

from celery import Celery

from worker.message_guard.dead_letter import DEAD_LETTER_KEY, DEAD_LETTER_LIMIT
from worker.message_guard.publish import UnpublishableMessageError

GUARDED_TRANSPORT = "worker.message_guard.transport:GuardedTransport"
GUARDED_CONSUMER = "worker.message_guard.consumer:GuardedConsumer"

__all__ = ["DEAD_LETTER_KEY", "DEAD_LETTER_LIMIT", "UnpublishableMessageError", "install_message_guard"]


def install_message_guard(app: Celery, signing_keys: Sequence[str] = ()) -> None:
    """Call before the app connects or publishes (create_app does).

    ``signing_keys`` (TENANT_SIGNING_KEY): with any, every published task message is signed with the first and
    every consumed one must verify with one of them (worker/tenant/signing.py); none means neither.
    """
    from worker.message_guard.publish import GuardedAMQP
    from worker.tenant.signing import signer_from_keys

    if "amqp" in app.__dict__:
        raise RuntimeError("install_message_guard must run before app.amqp is first used")
    scheme = urlsplit(app.conf.broker_url or "").scheme
    if scheme not in ("redis", "rediss"):
        raise RuntimeError(f"the message guard needs a redis:// or rediss:// broker, not {scheme}://")
    if scheme == "rediss" and not app.conf.broker_use_ssl:
        # Naming the transport ourselves skips kombu's rediss:// default of TLS; never connect in clear text.
        raise RuntimeError("a rediss:// broker needs broker_use_ssl when the message guard selects the transport")
    # A subclass per app: the keys stay out of app.conf, which `celery inspect conf` would show.
    app.amqp_cls = type("GuardedAMQP", (GuardedAMQP,), {"tenant_signer": signer_from_keys(signing_keys)})
    app.conf.broker_transport = GUARDED_TRANSPORT
    app.conf.worker_consumer = GUARDED_CONSUMER
