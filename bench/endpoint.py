"""A minimal HTTP/1.1 endpoint for the execution benchmark: keep-alive, answers every request with a fixed JSON
body after a fixed delay, counts requests. An asyncio protocol instead of a web framework, so that the peer's own
CPU (it shares the machine with the worker) disturbs the measurement as little as possible."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time

_BODY = b'{"output": "benchmark answer"}'
_RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
             + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY)


class _Protocol(asyncio.Protocol):
    def __init__(self, server: BenchEndpoint) -> None:
        self.server = server
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buffer[:head_end].lower()
            length = 0
            marker = head.find(b"content-length:")
            if marker >= 0:
                length = int(head[marker + 15:].split(b"\r\n", 1)[0])
            end = head_end + 4 + length
            if len(self.buffer) < end:
                return
            self.buffer = self.buffer[end:]
            self.server.request()
            asyncio.get_running_loop().call_later(self.server.latency, self._answer)

    def _answer(self) -> None:
        self.server.last_answer_at = time.monotonic()
        self.server.events.append((self.server.last_answer_at, -1))
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_RESPONSE)


class BenchEndpoint:
    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.url = ""
        self.calls = 0
        self.first_call_at: float | None = None
        self.last_answer_at: float | None = None
        #: (time, +1 for a request, -1 for an answer): the calls in flight over time.
        self.events: list[tuple[float, int]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def request(self) -> None:
        now = time.monotonic()
        if self.first_call_at is None:
            self.first_call_at = now
        self.calls += 1
        self.events.append((now, 1))

    def reset(self) -> None:
        self.events = []
        self.calls = 0
        self.first_call_at = None
        self.last_answer_at = None

    def total_calls(self) -> int:
        return self.calls

    def in_flight_profile(self, cap: int) -> dict[str, float]:
        """Where a run loses concurrency: seconds from the first call until 90 % of ``cap`` is in flight (ramp),
        the time-weighted mean in flight from then until the last moment at 90 % (steady), and the seconds after
        that until the last answer (tail)."""
        events = sorted(self.events)
        if not events:
            return {}
        level, timeline = 0, []
        for at, delta in events:
            level += delta
            timeline.append((at, level))
        high = [at for at, value in timeline if value >= 0.9 * cap]
        if not high:
            return {"ramp_s": float("nan"), "steady_mean_in_flight": float("nan"), "tail_s": float("nan")}
        start, end = high[0], high[-1]
        area = sum(value * (later - at) for (at, value), (later, _) in itertools.pairwise(timeline)
                   if start <= at < end)
        return {"ramp_s": round(start - events[0][0], 3),
                "steady_mean_in_flight": round(area / (end - start), 1) if end > start else float("nan"),
                "tail_s": round(events[-1][0] - end, 3)}

    def __enter__(self) -> BenchEndpoint:
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            server = loop.run_until_complete(loop.create_server(lambda: _Protocol(self), "127.0.0.1", 0,
                                                               backlog=2048))
            self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
            ready.set()
            loop.run_forever()
            server.close()

        self._thread = threading.Thread(target=serve, name="bench-endpoint", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
