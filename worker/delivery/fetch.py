"""A kombu Redis channel whose fetch takes a message and records it unacknowledged in one atomic step.

kombu's Redis transport takes a message with ``BRPOP`` and records it in the ``unacked`` hash (and its fetch time
in ``unacked_index``) only afterwards, from ``QoS.append``: a worker SIGKILLed, or a connection that dies, between
the two loses the message. Here the fetch alternates between two commands on the poller's connection:

* **take**: a Lua script that, over the same keys in the same order as kombu's ``BRPOP`` (every priority key of
  every consumed queue, in the fair cycle's order), looks at the next message, writes the ``unacked`` entry and
  index exactly as ``QoS.append`` would, and pops the message, all in one script: Redis runs it atomically and
  persists (AOF, replicas) its effects together. The reply either never leaves Redis with the message gone, or the
  message is in ``unacked`` where the recovery (``worker/delivery/recovery.py``) finds it if this worker never
  reads the reply.
* **wait**, only after a take found nothing: ``BLMOVE k k LEFT LEFT`` on one queue key (first the queue that
  delivered the last message, then rotating over the queues), with a short timeout. Source and destination
  being the same key, it changes nothing; it only blocks until that list has a message (or the timeout passes),
  then the next take runs. A message on a key not being watched waits at most ``WAIT_SECONDS`` plus Redis's
  timer granularity (Redis ends blocking timeouts on its ``hz`` clock: up to 100 ms at the default ``hz 10``)
  before the next take sees it.

Messages the script cannot parse or record (not a JSON object with a string ``delivery_tag`` and string
``delivery_info.exchange``/``routing_key``) are popped and returned unrecorded, as ``BRPOP`` would: kombu's
``QoS.append`` records them if they are deliverable at all (the envelope guard dead-letters the others).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from time import monotonic, time
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads
from redis.exceptions import NoScriptError

log = logging.getLogger("worker.delivery")

WAIT_SECONDS = 0.05

# KEYS[1] unacked hash, KEYS[2] unacked_index zset, KEYS[3..] queue keys in consumption order.
# ARGV[1] fetch time from the worker's clock, as QoS.append and the recovery compare it with time.time();
# ARGV[2..] '1' for each queue key whose consumer acknowledges, '0' for a no_ack consumer (kombu records nothing
# for those: Celery's control replies, for one).
# Writes come before the pop: a write refused (an OOM error aborts a script without undoing what it did) must
# find the message still in its queue. The entry is the raw JSON spliced into kombu's [message, exchange,
# routing_key], never re-encoded: cjson turns [] into {} and would change the message.
TAKE_SCRIPT = """
for i = 3, #KEYS do
  local item = redis.call('LINDEX', KEYS[i], -1)
  if item then
    local tag = ''
    local ok, message = pcall(cjson.decode, item)
    if ARGV[i - 1] == '1' and ok and type(message) == 'table' and type(message['properties']) == 'table' then
      local properties = message['properties']
      local info = properties['delivery_info']
      local candidate = properties['delivery_tag']
      if type(candidate) == 'string' and candidate ~= '' and type(info) == 'table'
          and type(info['exchange']) == 'string' and type(info['routing_key']) == 'string' then
        redis.call('ZADD', KEYS[2], ARGV[1], candidate)
        redis.call('HSET', KEYS[1], candidate,
          '[' .. item .. ',' .. cjson.encode(info['exchange']) .. ',' .. cjson.encode(info['routing_key']) .. ']')
        tag = candidate
      end
    end
    redis.call('RPOP', KEYS[i])
    return {i - 3, item, tag}
  end
end
return false
"""
TAKE_SHA = hashlib.sha1(TAKE_SCRIPT.encode(), usedforsecurity=False).hexdigest()  # the name Redis gives it

TAKE, WAIT, BRPOP = "take", "wait", "brpop"


class AtomicFetchQoS(kombu_redis.QoS):
    def restore_unacked(self, client: Any = None) -> None:
        """kombu gives back every unacknowledged message of a channel when it closes, also at a broker connection
        loss, while the tasks of some of them still run here (Celery keeps running them, and acknowledges them by
        tag afterwards, which works on any connection): each then ran twice. Those stay in ``unacked``; if this
        worker dies before acknowledging them, the delivery recovery gives them back. At shutdown everything is
        given back, as kombu does (a task still running then is being killed)."""
        from worker.delivery.handback import shutting_down
        from worker.delivery.holdings import running_delivery_tags

        running = set() if shutting_down() else running_delivery_tags()
        kept = 0
        with self.channel.conn_or_acquire(client) as connection:
            for tag in self._delivered:
                if str(tag) in running:
                    kept += 1
                else:
                    self.restore_by_tag(tag, client=connection)
        self._delivered.clear()
        if kept:
            log.info("channel closed: %d message(s) of tasks still running here stay unacknowledged", kept)

    def append(self, message: Any, delivery_tag: Any) -> None:
        channel = self.channel
        if delivery_tag is not None and delivery_tag == getattr(channel, "_recorded_tag", None):
            # The take script already wrote this very entry: keep only kombu's in-memory bookkeeping.
            channel._recorded_tag = None
            virtual.QoS.append(self, message, delivery_tag)
            return
        super().append(message, delivery_tag)


class AtomicFetchChannel(kombu_redis.Channel):
    """``atomic_fetch = False`` restores kombu's BRPOP (kept for side-by-side benchmarks)."""

    QoS = AtomicFetchQoS
    atomic_fetch = True
    wait_seconds = WAIT_SECONDS

    _pending_fetch: str | None = None  # which command the reply in flight answers
    _pending_queues: list[str] = []  # queue of each key of the take in flight, by index
    _recorded_tag: str | None = None  # set while delivering a message the take recorded
    _script_cached = False  # EVALSHA once Redis has the script; EVAL (which caches it) until then
    _last_delivered: str | None = None  # the queue of the last message taken, watched by the next wait
    _shared_client: Any = None  # conn_or_acquire's client, for the pool it was made for

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._next_fetch = TAKE
        self._wait_turn = itertools.count()
        self._no_ack_queues: set[str] = set()
        super().__init__(*args, **kwargs)

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        """kombu's ``conn_or_acquire`` builds a new ``redis.Redis`` on every call (every acknowledgement, every
        restore): its constructor copies redis-py's table of response callbacks, about 60 µs of CPU per task. A
        client holds no connection of its own (each command borrows one from the pool and gives it back), so one
        client per pool serves every caller, threads included; a new pool (after a connection error) gets a new one.
        """
        if client:
            yield client
            return
        pool = self.pool
        shared = self._shared_client
        if shared is None or shared.connection_pool is not pool:
            shared = self._shared_client = self._create_client()
        yield shared

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        (self._no_ack_queues.add if no_ack else self._no_ack_queues.discard)(queue)
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    def _basic_cancel(self, consumer_tag: Any) -> Any:
        queue = self._tag_to_queue.get(consumer_tag)
        result = super()._basic_cancel(consumer_tag)
        if queue is not None and queue not in self._active_queues:
            self._no_ack_queues.discard(queue)
        return result

    # -- sending ------------------------------------------------------------------------------------
    def _brpop_start(self, timeout: float | None = None) -> None:
        if not self.atomic_fetch:
            super()._brpop_start(timeout)
            if self._in_poll:
                self._pending_fetch = BRPOP
            return
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        prefix = self.global_keyprefix or ""
        connection = self.client.connection
        if self._next_fetch == WAIT:
            # The first wait after a delivery watches the queue that delivered: a task that sends follow-up tasks
            # to its own queue (an execution lane's successors, a workflow's next step) is the likeliest next
            # message, and a message on an unwatched key waits out the timeout (Redis ends blocking timeouts on
            # its own clock, up to 1/hz late). Later waits rotate over every queue.
            last, self._last_delivered = self._last_delivered, None
            key = prefix + (last if last in queues else queues[next(self._wait_turn) % len(queues)])
            seconds = min(self.wait_seconds, self.brpop_timeout) if self.brpop_timeout else self.wait_seconds
            args: list[Any] = ["BLMOVE", key, key, "LEFT", "LEFT", seconds]
            self._pending_fetch = WAIT
        else:
            pairs = [(queue, self._q_for_pri(queue, pri)) for pri in self.priority_steps for queue in queues]
            keys = [prefix + self.unacked_key, prefix + self.unacked_index_key, *(prefix + key for _, key in pairs)]
            script = ["EVALSHA", TAKE_SHA] if self._script_cached else ["EVAL", TAKE_SCRIPT]
            acks = ["0" if queue in self._no_ack_queues else "1" for queue, _ in pairs]
            args = [*script, len(keys), *keys, repr(time()), *acks]
            self._pending_queues = [queue for queue, _ in pairs]
            self._pending_fetch = TAKE
        self._in_poll = connection
        self._brpop_sent_at = monotonic()
        connection.send_command(*args)

    # -- reading ------------------------------------------------------------------------------------
    def _brpop_read(self, **options: Any) -> bool:
        pending, self._pending_fetch = self._pending_fetch, None
        try:
            if pending == BRPOP or (pending is None and not self.atomic_fetch):
                return self._read_brpop(**options)
            try:
                reply = self.client.parse_response(self.client.connection, "EVALSHA", **options)
            except self.ResponseError as exc:
                if pending == TAKE and isinstance(exc, NoScriptError):
                    self._script_cached = False  # Redis restarted or flushed its scripts; nothing ran
                    raise kombu_redis.Empty() from None
                if pending == WAIT and "unknown command" in str(exc).lower():
                    # BLMOVE needs Redis 6.2; older servers keep kombu's BRPOP and its window.
                    log.error("Redis has no BLMOVE (it needs Redis >= 6.2): fetching with BRPOP, which can lose "
                              "the message of a fetch in flight (docs/reliability.md)")
                    self.atomic_fetch = False
                    self._next_fetch = TAKE
                    raise kombu_redis.Empty() from None
                raise
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if pending == TAKE:
                self._script_cached = True
            if pending != TAKE:  # the wait ended (a message arrived or its timeout passed): take next
                self._next_fetch = TAKE
                raise kombu_redis.Empty()
            if not reply:
                self._next_fetch = WAIT
                raise kombu_redis.Empty()
            index, item, tag = reply
            queue = self._pending_queues[int(index)]
            self._queue_cycle.rotate(queue)
            self._last_delivered = queue
            self._deliver_fetched(item, queue, bytes_to_str(tag) or None)
            return True
        finally:
            self._in_poll = None
            self._recorded_tag = None
            self._flush_brpop_reauth()

    def _read_brpop(self, **options: Any) -> bool:
        # kombu's Channel._brpop_read up to the delivery (the caller's finally does the rest).
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
        self._deliver_fetched(item, dest, None)
        return True

    def _deliver_fetched(self, item: bytes, queue: str, recorded: str | None) -> None:
        """Hand a fetched payload to kombu; ``recorded``: the delivery tag the take wrote to ``unacked``, if any."""
        self._deliver_envelope(loads(bytes_to_str(item)), queue, recorded)

    def _deliver_envelope(self, envelope: Any, queue: str, recorded: str | None) -> None:
        if recorded is not None:
            properties = envelope.get("properties") if isinstance(envelope, dict) else None
            tag = properties.get("delivery_tag") if isinstance(properties, dict) else None
            if tag == recorded:
                self._recorded_tag = recorded
            else:  # the script and Python read the JSON differently (duplicate keys?): keep only Python's entry
                self.forget_recorded(recorded)
        self.connection._deliver(envelope, queue)

    def forget_recorded(self, tag: str) -> None:
        """Drop an ``unacked`` entry the take wrote for a message that will not be delivered."""
        self.qos._remove_from_indices(tag).execute()

    def _on_connection_disconnect(self, connection: Any) -> None:
        if self._in_poll is connection:
            self._pending_fetch = None
        super()._on_connection_disconnect(connection)


class AtomicFetchPoller(kombu_redis.MultiChannelPoller):
    """kombu pauses a pending fetch whose reply arrives when the channel has no credit left (its prefetch limit
    lowered meanwhile, e.g. when an ETA task moves to the pool), keeping the popped message in the socket. A take's
    reply is a message already recorded in ``unacked`` that this worker does not list as held yet: left unread for
    longer than the recovery's grace it would be given to another worker while this one still has it. So a take's
    reply is always read and delivered (one message over the prefetch limit, as kombu did before it paused); a
    pending wait is paused as before (its reply holds nothing)."""

    def _pause_brpop(self, channel: Any, fileno: int) -> None:
        if _take_pending(channel):
            return
        super()._pause_brpop(channel, fileno)

    def on_readable(self, fileno: int) -> Any:
        found = self._fd_to_chan.get(fileno)
        if found is not None and fileno not in self._paused_brpop:
            channel, kind = found
            if kind == "BRPOP" and _take_pending(channel) and not channel.qos.can_consume():
                return channel.handlers[kind]()
        return super().on_readable(fileno)


def _take_pending(channel: Any) -> bool:
    return bool(channel._in_poll) and getattr(channel, "_pending_fetch", None) == TAKE


class AtomicFetchTransport(kombu_redis.Transport):
    Channel = AtomicFetchChannel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cycle = AtomicFetchPoller()
