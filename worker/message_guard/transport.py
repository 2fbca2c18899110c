"""A kombu Redis transport whose channel checks each raw envelope before kombu decodes it.

kombu 5.7 turns the popped bytes into a dict and a Message without any error handling: a payload that is not
JSON, not an object, has no properties or a bad base64 body raises out of the event loop and ends the worker.
Here such a payload is dead-lettered instead, and taken out of the unacked hash if the fetch recorded it there,
so nothing restores it on shutdown. The fetch itself is the atomic take of worker/delivery/fetch.py. Selected with
``broker_transport``; URLs stay redis:// or rediss://.
"""

from __future__ import annotations

from typing import Any

from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from worker.delivery.fetch import AtomicFetchChannel, AtomicFetchTransport
from worker.message_guard.dead_letter import discard
from worker.message_guard.rules import envelope_problem


def decode_envelope(item: bytes | str) -> tuple[Any, str | None]:
    """(envelope, None) when kombu can build a Message from it, else (None, reason)."""
    try:
        envelope = loads(bytes_to_str(item))
    except Exception as exc:  # kombu's json hooks raise assorted errors on hostile input
        return None, f"envelope is not JSON: {type(exc).__name__}: {exc}"
    problem = envelope_problem(envelope)
    return (None, problem) if problem else (envelope, None)


class GuardedChannel(AtomicFetchChannel):
    def _deliver_fetched(self, item: bytes, queue: str, recorded: str | None) -> None:
        # The popped item is checked before kombu decodes it; a message the take recorded in unacked leaves it
        # in the same transaction that dead-letters it.
        envelope, problem = decode_envelope(item)
        if problem:
            discard(self, item, problem, queue, unacked_tag=recorded)
        else:
            self._deliver_envelope(envelope, queue, recorded)

    def _do_restore_message(self, payload: Any, exchange: str, routing_key: str, pipe: Any,
                            leftmost: bool = False) -> None:
        # Unacked messages left by a worker without this guard: kombu would log a traceback and drop them.
        problem = envelope_problem(payload)
        if problem:
            discard(self, payload, f"on restore: {problem}", routing_key)
            return
        super()._do_restore_message(payload, exchange, routing_key, pipe, leftmost)


class GuardedTransport(AtomicFetchTransport):
    Channel = GuardedChannel
