"""The atomic fetch (worker/delivery/fetch.py) on a real Redis, driven through kombu as the worker drives it.

Each test compares with kombu's own BRPOP fetch (``atomic_fetch = False``) where that shows what changed: a reply
lost in flight loses the message with BRPOP and leaves it in ``unacked`` with the take; the order in which messages
of several queues and priorities are consumed is the same.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import select
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Connection, Consumer, Exchange, Producer, Queue

from worker.delivery.fetch import TAKE, AtomicFetchChannel, AtomicFetchTransport

pytestmark = pytest.mark.timeout(60)


class BrpopChannel(AtomicFetchChannel):
    atomic_fetch = False


class BrpopTransport(AtomicFetchTransport):
    Channel = BrpopChannel


TRANSPORTS = {"take": AtomicFetchTransport, "brpop": BrpopTransport}


@pytest.fixture
def prefix() -> str:
    return f"twtest-fetch-{secrets.token_hex(4)}:"


@pytest.fixture
def url(redis_base: str) -> str:
    return f"{redis_base}/0"


@pytest.fixture
def plain(url: str, prefix: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(url)
    yield client
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


def connect(url: str, prefix: str, transport: type = AtomicFetchTransport) -> Connection:
    return Connection(url, transport=transport, transport_options={"global_keyprefix": prefix})


def queue(name: str) -> Queue:
    return Queue(name, Exchange(name, type="direct"), routing_key=name, max_priority=9)


def publish(connection: Connection, name: str, body: Any, priority: int | None = None) -> None:
    with connection.channel() as channel:
        Producer(channel).publish(body, exchange=name, routing_key=name, declare=[queue(name)],
                                  serializer="json", priority=priority)


def wait_readable(sock: Any, timeout: float = 5.0) -> None:
    readable, _, _ = select.select([sock], [], [], timeout)
    assert readable, "no reply from Redis"


@pytest.mark.parametrize("kind", ["take", "brpop"])
def test_a_fetch_whose_reply_is_never_read_leaves_the_message_unacked(url: str, prefix: str, plain: redis.Redis,
                                                                       kind: str) -> None:
    """The worker dies (its socket closes) with the fetch's reply in flight: the take has already recorded the
    message in ``unacked``, from where kombu's restore_by_tag (the recovery's tool) brings it back; BRPOP lost it."""
    connection = connect(url, prefix, TRANSPORTS[kind])
    publish(connection, "fetch-a", {"n": 1})
    channel = connection.channel()
    consumer = Consumer(channel, [queue("fetch-a")], callbacks=[lambda body, message: None], accept=["json"])
    consumer.consume()
    connection.transport.cycle._register_BRPOP(channel)  # what the event loop does: send the fetch
    wait_readable(channel.client.connection._sock)
    channel.client.connection.disconnect()  # the reply is in our socket, never read

    assert plain.llen(f"{prefix}fetch-a") == 0  # taken off the queue either way
    entries = plain.hgetall(f"{prefix}unacked")
    if kind == "brpop":
        assert entries == {}  # kombu's window: gone from Redis
        return
    [(tag, entry)] = entries.items()
    message, exchange, routing_key = json.loads(entry)
    assert (exchange, routing_key) == ("fetch-a", "fetch-a")
    assert message["properties"]["delivery_tag"] == tag.decode()
    assert plain.zscore(f"{prefix}unacked_index", tag) == pytest.approx(time.time(), abs=5)

    with connect(url, prefix) as fresh:
        fresh_channel = fresh.channel()
        fresh_channel.qos.restore_by_tag(tag.decode())
        got = fresh_channel.basic_get("fetch-a")
        assert got is not None and got.decode() == {"n": 1}
        got.ack()
    assert plain.hlen(f"{prefix}unacked") == 0
    connection.release()


def consume_all(url: str, prefix: str, transport: type, queues: list[str], count: int) -> list[Any]:
    got: list[Any] = []

    def on_message(body: Any, message: Any) -> None:
        got.append(body)
        message.ack()

    with connect(url, prefix, transport) as connection:
        with Consumer(connection.channel(), [queue(name) for name in queues], callbacks=[on_message],
                      accept=["json"]):
            deadline = time.monotonic() + 20
            while len(got) < count and time.monotonic() < deadline:
                try:
                    connection.drain_events(timeout=1)
                except TimeoutError:
                    pass
    return got


def test_queue_fairness_fifo_and_priorities_are_those_of_brpop(url: str, prefix: str, plain: redis.Redis) -> None:
    """Messages on two queues and three priorities come out in exactly the order kombu's BRPOP gives them: round
    robin between the queues, FIFO within a queue, higher priority (lower number) first; each once, none left."""
    sequences = {}
    for kind, transport in TRANSPORTS.items():
        with connect(url, prefix) as producer:
            for n in range(6):
                publish(producer, "celery-t", {"q": "celery", "n": n})
                publish(producer, "execution-t", {"q": "execution", "n": n})
            publish(producer, "execution-t", {"q": "execution", "n": "urgent"}, priority=0)
            publish(producer, "celery-t", {"q": "celery", "n": "late"}, priority=9)
            publish(producer, "celery-t", {"q": "celery", "n": "soon"}, priority=3)
        # Published without priority a message counts as priority 0 too, so "urgent" is FIFO among those.
        sequences[kind] = consume_all(url, prefix, transport, ["celery-t", "execution-t"], 15)
        assert plain.hlen(f"{prefix}unacked") == 0
        assert plain.llen(f"{prefix}celery-t") == plain.llen(f"{prefix}execution-t") == 0
    take = sequences["take"]
    assert len(take) == 15 and len({json.dumps(body, sort_keys=True) for body in take}) == 15
    assert take == sequences["brpop"]
    for name in ("celery", "execution"):
        numbers = [body["n"] for body in take if body["q"] == name and isinstance(body["n"], int)]
        assert numbers == list(range(6))
    firsts = [body["q"] for body in take[:4]]
    assert firsts == ["celery", "execution", "celery", "execution"] or \
        firsts == ["execution", "celery", "execution", "celery"]
    assert take.index({"q": "celery", "n": "soon"}) < take.index({"q": "celery", "n": "late"})


def test_an_idle_consumer_wakes_for_a_message_on_any_of_its_queues(url: str, prefix: str,
                                                                  plain: redis.Redis) -> None:
    """While waiting it watches one queue at a time; a message on the other is still taken within the wait's
    timeout, and the waits changed nothing in the queues."""
    got: list[tuple[float, Any]] = []
    with connect(url, prefix) as connection, connect(url, prefix) as producer:
        with Consumer(connection.channel(), [queue("celery-w"), queue("execution-w")], accept=["json"],
                      callbacks=[lambda body, message: (got.append((time.monotonic(), body)), message.ack())]):
            for name in ("celery-w", "execution-w", "execution-w", "celery-w"):
                for _ in range(3):  # idle for a while: several take/wait turns
                    try:
                        connection.drain_events(timeout=0.3)
                    except TimeoutError:
                        pass
                sent = time.monotonic()
                publish(producer, name, {"q": name})
                deadline = sent + 5
                while not got and time.monotonic() < deadline:
                    try:
                        connection.drain_events(timeout=0.5)
                    except TimeoutError:
                        pass
                assert got, f"nothing taken from {name}"
                (at, body), = got
                assert body == {"q": name}
                assert at - sent < 0.9, f"{name}: taken {at - sent:.2f}s after it was sent"
                got.clear()
    assert plain.hlen(f"{prefix}unacked") == 0


def test_the_first_wait_after_a_delivery_watches_the_queue_that_delivered(url: str, prefix: str,
                                                                          plain: redis.Redis) -> None:
    """A task that sends follow-up tasks to its own queue (an execution lane's successors) should not wait out
    a timeout on another queue: after a message from queue Q, the first BLMOVE is on Q."""
    names = ("celery-f", "execution-f")
    with connect(url, prefix) as connection, connect(url, prefix) as producer:
        got: list[Any] = []
        with Consumer(connection.channel(), [queue(name) for name in names], accept=["json"],
                      callbacks=[lambda body, message: (got.append(body), message.ack())]):
            for name in ("execution-f", "celery-f", "execution-f", "celery-f", "execution-f"):
                with plain.monitor() as monitor:
                    publish(producer, name, {"q": name})
                    while not got:
                        with contextlib.suppress(TimeoutError):
                            connection.drain_events(timeout=0.5)
                    assert got == [{"q": name}]
                    got.clear()
                    with contextlib.suppress(TimeoutError):
                        connection.drain_events(timeout=0.2)  # the take finds nothing, then the wait starts
                    published = taken = False
                    while True:  # the first wait issued after the take that popped our message
                        # (not merely after the push: a rotation wait issued between the push and that take,
                        # the take having found the queue empty just before, is the previous cycle's)
                        command = monitor.next_command()["command"]
                        words = command.split()
                        key = words[1] if len(words) > 1 else ""
                        published = published or (words[0].upper() == "LPUSH" and key == f"{prefix}{name}")
                        taken = taken or (published and words[0].upper() == "RPOP" and key == f"{prefix}{name}")
                        if taken and words[0].upper() == "BLMOVE":
                            break
                assert command.split()[1] == f"{prefix}{name}", (name, command)


def test_a_take_reply_is_delivered_even_when_the_prefetch_limit_was_lowered_meanwhile(
        url: str, prefix: str, plain: redis.Redis) -> None:
    """kombu pauses a pending fetch when its channel has no credit left; a take's message is already in
    ``unacked`` and must reach this worker (which then lists it as held) rather than sit unread in the socket."""
    got: list[Any] = []
    with connect(url, prefix) as connection, connect(url, prefix) as producer:
        publish(producer, "fetch-p", {"n": 1})
        channel = connection.channel()
        consumer = Consumer(channel, [queue("fetch-p")], accept=["json"],
                            callbacks=[lambda body, message: got.append(message)])
        consumer.consume()
        cycle = connection.transport.cycle
        cycle._register_BRPOP(channel)
        assert channel._pending_fetch == TAKE
        channel.qos.prefetch_count = 1
        channel.qos._delivered["someone-else"] = object()  # the limit is now reached
        assert not channel.qos.can_consume()
        fileno = channel.client.connection._sock.fileno()
        wait_readable(channel.client.connection._sock)
        cycle._update_brpop_polling()  # what every event loop tick does first
        assert fileno not in cycle._paused_brpop
        cycle.on_readable(fileno)
        assert [message.decode() for message in got] == [{"n": 1}]
        assert got[0].delivery_tag in channel.qos._delivered
        assert plain.hexists(f"{prefix}unacked", got[0].delivery_tag)
        del channel.qos._delivered["someone-else"]
        got[0].ack()


def test_the_take_reloads_its_script_after_redis_forgot_it(tmp_path: Path) -> None:
    """A restarted Redis has no scripts: the take answering NOSCRIPT ran nothing, and the next one sends the
    script itself."""
    from worker.dev.services import start_redis

    url, server = start_redis(tmp_path)
    try:
        private = redis.Redis.from_url(url)
        with connect(url, "p:") as producer:
            publish(producer, "fetch-s", {"n": 1})
            publish(producer, "fetch-s", {"n": 2})
        got: list[Any] = []
        with connect(url, "p:") as connection:
            with Consumer(connection.channel(), [queue("fetch-s")], accept=["json"],
                          callbacks=[lambda body, message: (got.append(body), message.ack())]):
                connection.drain_events(timeout=5)
                private.script_flush()
                deadline = time.monotonic() + 5
                while len(got) < 2 and time.monotonic() < deadline:
                    try:
                        connection.drain_events(timeout=1)
                    except TimeoutError:
                        pass
        assert got == [{"n": 1}, {"n": 2}]
        assert private.hlen("p:unacked") == 0
        private.close()
    finally:
        server.terminate()
        server.wait(10)


def test_a_no_ack_consumer_leaves_nothing_unacked(url: str, prefix: str, plain: redis.Redis) -> None:
    """kombu records nothing for a consumer without acknowledgements (Celery's control replies are one): the take
    must not either, or the recovery would publish those messages again."""
    got: list[Any] = []
    with connect(url, prefix) as connection, connect(url, prefix) as producer:
        publish(producer, "fetch-n", {"n": 1})
        publish(producer, "fetch-k", {"n": 2})
        channel = connection.channel()
        with Consumer(channel, [queue("fetch-n")], no_ack=True, accept=["json"],
                      callbacks=[lambda body, message: got.append(body)]), \
                Consumer(channel, [queue("fetch-k")], accept=["json"],
                         callbacks=[lambda body, message: got.append(body)]):
            deadline = time.monotonic() + 5
            while len(got) < 2 and time.monotonic() < deadline:
                try:
                    connection.drain_events(timeout=1)
                except TimeoutError:
                    pass
            assert sorted(body["n"] for body in got) == [1, 2]
            [tag] = plain.hkeys(f"{prefix}unacked")  # only the acknowledging consumer's message
            assert json.loads(plain.hget(f"{prefix}unacked", tag))[2] == "fetch-k"
        assert channel._no_ack_queues == set()


def test_a_redis_without_blmove_falls_back_to_brpop(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Before Redis 6.2 there is no BLMOVE: the consumer says so once and keeps consuming with kombu's BRPOP."""
    from worker.dev.services import start_redis

    url, server = start_redis(tmp_path, extra=["--rename-command", "BLMOVE", ""])
    try:
        got: list[Any] = []
        with connect(url, "p:") as connection, connect(url, "p:") as producer:
            with Consumer(connection.channel(), [queue("fetch-o")], accept=["json"],
                          callbacks=[lambda body, message: (got.append(body), message.ack())]) as consumer:
                for _ in range(3):  # an empty take, then the wait Redis refuses
                    try:
                        connection.drain_events(timeout=0.5)
                    except TimeoutError:
                        pass
                publish(producer, "fetch-o", {"n": 1})
                deadline = time.monotonic() + 5
                while not got and time.monotonic() < deadline:
                    try:
                        connection.drain_events(timeout=1)
                    except TimeoutError:
                        pass
                assert got == [{"n": 1}]
                assert consumer.channel.atomic_fetch is False
        assert "Redis has no BLMOVE" in caplog.text
    finally:
        server.terminate()
        server.wait(10)


def test_acknowledgements_share_one_client_per_pool_and_ack_for_real(url: str, prefix: str,
                                                                       plain: redis.Redis) -> None:
    # kombu made a new redis.Redis (a copy of redis-py's callback table) for every acknowledgement; the channel
    # now keeps one per connection pool, and after the pool is replaced (a connection error) it makes a new one.
    with connect(url, prefix) as connection:
        received: list[Any] = []
        for n in range(3):
            publish(connection, "shared-client", {"n": n})
        with connection.channel() as channel, Consumer(channel, [queue("shared-client")],
                                                        callbacks=[lambda body, msg: received.append(msg)]):
            while len(received) < 3:
                connection.drain_events(timeout=5)
            clients = []
            for message in received:
                message.ack()
                with channel.conn_or_acquire() as client:
                    clients.append(client)
            assert all(client is clients[0] for client in clients)
            assert clients[0].connection_pool is channel.pool
            assert plain.hlen(f"{prefix}unacked") == 0  # the shared client's acknowledgements reached Redis
            channel._disconnect_pools()
            with channel.conn_or_acquire() as client:
                assert client is not clients[0] and client.connection_pool is channel.pool
                assert client.ping()
            given = object()
            with channel.conn_or_acquire(given) as client:
                assert client is given
