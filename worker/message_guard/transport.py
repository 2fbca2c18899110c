"""A kombu Redis transport whose channel checks each raw envelope before kombu decodes it.

kombu 5.7 turns the popped bytes into a dict and a Message without any error handling: a payload that is not
JSON, not an object, has no properties or a bad base64 body raises out of the event loop and ends the worker.
Here such a payload is dead-lettered instead; it was already popped by BRPOP and never reached the unacked
hash, so nothing restores it on shutdown. Selected with ``broker_transport``; URLs stay redis:// or rediss://.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

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


class GuardedChannel(kombu_redis.Channel):
    def _brpop_read(self, **options: Any) -> bool:
        # kombu 5.7.0's Channel._brpop_read, except that the popped item is checked before delivery.
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if not dest__item:
                raise kombu_redis.Empty()
            dest, item = dest__item
            dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            envelope, problem = decode_envelope(item)
            if problem:
                discard(self, item, problem, dest)
            else:
                self.connection._deliver(envelope, dest)
            return True
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()

    def _do_restore_message(self, payload: Any, exchange: str, routing_key: str, pipe: Any,
                            leftmost: bool = False) -> None:
        # Unacked messages left by a worker without this guard: kombu would log a traceback and drop them.
        problem = envelope_problem(payload)
        if problem:
            discard(self, payload, f"on restore: {problem}", routing_key)
            return
        super()._do_restore_message(payload, exchange, routing_key, pipe, leftmost)


class GuardedTransport(kombu_redis.Transport):
    Channel = GuardedChannel
