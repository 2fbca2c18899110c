"""One asyncio event loop per worker process, in a daemon thread, shared by every lane the process runs.

Tasks are synchronous (prefork children, or threads of the threads pool); a lane is a coroutine. Running lanes
on one long-lived loop keeps the endpoint client's connection pool and OAuth2 tokens across lane tasks and lets
several lanes of a threads-pool process share one loop. A forked child starts its own loop on first use.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def _forget_after_fork() -> None:
    global _loop
    _loop = None  # the parent's loop thread does not exist in the child


os.register_at_fork(after_in_child=_forget_after_fork)


def event_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def serve() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            threading.Thread(target=serve, name="execution-loop", daemon=True).start()
            ready.wait()
            _loop = loop
        return _loop


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` on the process loop and wait for it. If the waiting thread is interrupted (a soft time
    limit, a terminate), the coroutine is cancelled and given a moment to clean up before the error goes on."""
    future = asyncio.run_coroutine_threadsafe(coroutine, event_loop())
    try:
        return future.result()
    except BaseException:
        future.cancel()
        # The coroutine's own end (cancelled, or an error while cleaning up) matters less than the interruption.
        with contextlib.suppress(concurrent.futures.CancelledError, concurrent.futures.TimeoutError, Exception):
            future.result(timeout=5)
        raise
