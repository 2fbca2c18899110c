"""SIGTERM hands waiting (countdown) tasks back at once: another worker runs them while the first one still
finishes its running task, which is acknowledged and not run twice (worker/delivery/handback.py)."""

from __future__ import annotations

import secrets
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import start_worker_process

pytestmark = pytest.mark.timeout(180)

APP = "tests.support.delivery_worker_app"
LONG_SECONDS = 25.0
WAITING = 3


def assert_waiting_tasks_run_elsewhere_while_first_worker_finishes(
        session_env: dict[str, str], run_dir: Path, client_app: Any, pool: str, kind: str, handback_line: str,
        first_worker_args: tuple[str, ...] = (), countdown: float | None = None) -> None:
    """Start a worker, give it one long task and then ``WAITING`` short ones it holds without starting (``kind``
    says how it holds them), SIGTERM it and start a second worker: the short ones must run on the second while the
    first still finishes the long one, every task exactly once, and the first must log ``handback_line``."""
    counter_url = session_env["BROKER_URL"]
    counter_key = f"{session_env['REDIS_KEY_PREFIX']}handback-test:{secrets.token_hex(4)}"
    client = redis.Redis.from_url(counter_url)
    prefix = session_env["REDIS_KEY_PREFIX"]
    first = start_worker_process(session_env, run_dir, pool, 1, app=APP, ping_app=client_app,
                                 extra_args=first_worker_args)
    second = None
    try:
        long_task = client_app.send_task("tests.delivery.count", args=(counter_url, counter_key, LONG_SECONDS))
        deadline = time.monotonic() + 30
        while not client.hget(counter_key + ":started", long_task.id):
            assert time.monotonic() < deadline, "the long task never started"
            time.sleep(0.05)
        waiting = [client_app.send_task("tests.delivery.count", args=(counter_url, counter_key, 0.1),
                                        countdown=countdown).id
                   for _ in range(WAITING)]
        # The first worker takes them (into its timer, or its pool's queue): the queue empties.
        deadline = time.monotonic() + 15
        while client.llen(prefix + "celery") or client.hlen(prefix + "unacked") < WAITING + 1:
            assert time.monotonic() < deadline, f"the first worker did not take the {kind} tasks"
            time.sleep(0.05)
        first.proc.send_signal(signal.SIGTERM)
        second = start_worker_process(session_env, run_dir, pool, 1, app=APP, ping_app=client_app)
        deadline = time.monotonic() + 60
        while not all(client.hget(counter_key, task_id) for task_id in waiting):
            assert time.monotonic() < deadline, f"the {kind} tasks did not run:\n{first.log()[-3000:]}"
            time.sleep(0.1)
        # The point: they ran elsewhere while the first worker was still finishing its long task.
        assert first.proc.poll() is None, "the first worker had exited already: nothing was handed back early"
        assert not client.hget(counter_key, long_task.id)
        assert first.proc.wait(LONG_SECONDS + 30) == 0, first.log()[-3000:]
        # The running task finished on the first worker and was acknowledged: it does not run again.
        time.sleep(2)
        counts = {key.decode(): int(value) for key, value in client.hgetall(counter_key).items()}
        assert counts == {long_task.id: 1, **{task_id: 1 for task_id in waiting}}
        assert handback_line in first.log()
    finally:
        first.stop()
        if second is not None:
            second.stop()
        client.delete(counter_key, counter_key + ":started")
        client.close()


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_sigterm_hands_countdown_tasks_to_another_worker_before_exiting(session_env, run_dir, client_app,
                                                                        pool: str) -> None:
    assert_waiting_tasks_run_elsewhere_while_first_worker_finishes(
        session_env, run_dir, client_app, pool, kind="countdown",
        handback_line="handed 3 waiting (ETA/countdown) task(s) back", countdown=4)


# Threads only: the prefork pool keeps such tasks in its outgoing buffer, which the hand-back does not reach (they
# return when the worker exits; docs/reliability.md). With the default prefetch multiplier of 1 neither pool holds
# a task it cannot start.
@pytest.mark.parametrize("pool", ["threads"])
def test_sigterm_hands_prefetched_tasks_to_another_worker_before_exiting(session_env, run_dir, client_app,
                                                                         pool: str) -> None:
    """With a prefetch multiplier above 1 the worker takes tasks it cannot start yet (the threads pool queues them
    in its executor, which would run them all before exiting); on SIGTERM they go back to the queue at once and
    another worker runs them while the first one still finishes its running task."""
    assert_waiting_tasks_run_elsewhere_while_first_worker_finishes(
        session_env, run_dir, client_app, pool, kind="prefetched",
        handback_line=f"handed {WAITING} prefetched task(s) that no thread had started back",
        first_worker_args=("--prefetch-multiplier", str(WAITING + 1)))
