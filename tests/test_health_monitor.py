"""The heartbeat watchdog in a real worker process, against a private redis-server that the test stops.

While the broker is up the consumer's loop rewrites the heartbeat; while it is gone only the watchdog thread
does, for WORKER_BROKER_LOST_EXIT_AFTER seconds, after which the heartbeat disappears and the worker exits
with status 1. 0 means the watchdog beats for as long as the outage lasts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, WorkerProcess, start_worker_process
from worker.dev.services import free_port, start_redis

pytestmark = pytest.mark.timeout(180)

INTERVAL = 1  # WORKER_HEARTBEAT_INTERVAL of every worker here
BOUND = 4  # WORKER_BROKER_LOST_EXIT_AFTER of the workers that give up
# Celery notices the give-up between two reconnection attempts (kombu calls back about once a second);
# without the bound, broker_connection_max_retries would end the worker only after about 110 s.
EXIT_SLACK = 15


@dataclass
class PrivateRedis:
    """A redis-server of this test alone, so that the test can take the broker away and bring it back."""

    run_dir: Path
    port: int
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        _, self.proc = start_redis(self.run_dir, port=self.port)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PrivateRedis]:
    redis = PrivateRedis(tmp_path / "redis", free_port())
    redis.start()
    yield redis
    redis.stop()


def worker_env(session_env: dict[str, str], broker: PrivateRedis, health_dir: Path, lost_exit_after: int) -> dict:
    return {**session_env, "BROKER_URL": f"{broker.url}/0", "CELERY_RESULT_BACKEND": f"{broker.url}/1",
            "WORKER_HEALTH_DIR": str(health_dir), "WORKER_HEARTBEAT_INTERVAL": str(INTERVAL),
            "WORKER_HEARTBEAT_MAX_AGE": "3", "WORKER_BROKER_LOST_EXIT_AFTER": str(lost_exit_after)}


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return None


def beats_during(heartbeat: Path, seconds: float, worker: WorkerProcess) -> list[float | None]:
    """The heartbeat's mtime (None while absent), sampled every 0.1 s while the worker runs."""
    seen: list[float | None] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and worker.proc.poll() is None:
        seen.append(mtime(heartbeat))
        time.sleep(0.1)
    return seen


def distinct_beats(samples: list[float | None], after: float) -> int:
    return len({sample for sample in samples if sample is not None and sample > after})


def test_the_consumer_loop_beats_while_the_broker_is_up(session_env, run_dir, broker, tmp_path) -> None:
    health = tmp_path / "health"
    worker = start_worker_process(worker_env(session_env, broker, health, BOUND), run_dir, pool="threads",
                                  concurrency=1)
    try:
        wait_for((health / "ready").exists, 15, "the ready marker")
        started = time.time()
        samples = beats_during(health / "heartbeat", 4 * INTERVAL + 0.5, worker)
        assert worker.proc.poll() is None, worker.log()[-3000:]
        assert distinct_beats(samples, started) >= 3, samples
        assert (health / "node").read_text().strip() == worker.node
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]
    assert not (health / "ready").exists()


def test_worker_gives_up_after_the_bound_with_status_1(session_env, run_dir, broker, tmp_path) -> None:
    health = tmp_path / "health"
    heartbeat = health / "heartbeat"
    worker = start_worker_process(worker_env(session_env, broker, health, BOUND), run_dir, pool="threads",
                                  concurrency=1)
    try:
        wait_for((health / "ready").exists, 15, "the ready marker")
        broker.stop()
        lost, lost_wall = time.monotonic(), time.time()
        samples: list[tuple[float, float | None]] = []
        while worker.proc.poll() is None and time.monotonic() - lost < BOUND + EXIT_SLACK:
            samples.append((time.monotonic() - lost, mtime(heartbeat)))
            time.sleep(0.1)
        exited_after = time.monotonic() - lost
        status = worker.proc.poll()
    finally:
        worker.stop()
    log = worker.log()
    assert status == 1, f"exit status {status} after {exited_after:.1f}s:\n{log[-3000:]}"
    assert BOUND <= exited_after < BOUND + EXIT_SLACK, exited_after
    # During the outage the watchdog (the consumer loop is reconnecting) kept the heartbeat fresh ...
    assert distinct_beats([beat for _, beat in samples], lost_wall) >= BOUND - 1, samples
    # ... until the bound, then it removed it and did not beat again.
    gone = [elapsed for elapsed, beat in samples if beat is None]
    assert gone, "the heartbeat was never removed"
    assert gone[0] >= BOUND - 0.5, f"heartbeat removed {gone[0]:.1f}s into the outage, before the bound"
    assert all(beat is None for elapsed, beat in samples if elapsed >= gone[0]), samples
    assert not heartbeat.exists() and not (health / "ready").exists()
    assert f"WORKER_BROKER_LOST_EXIT_AFTER={BOUND}s" in log and "get back the broker" in log


def test_zero_means_the_watchdog_beats_through_any_outage(session_env, run_dir, broker, tmp_path) -> None:
    health = tmp_path / "health"
    heartbeat = health / "heartbeat"
    worker = start_worker_process(worker_env(session_env, broker, health, 0), run_dir, pool="threads",
                                  concurrency=1)
    try:
        wait_for((health / "ready").exists, 15, "the ready marker")
        broker.stop()
        lost_wall = time.time()
        wait_for(lambda: not (health / "ready").exists(), 15, "the ready marker to go with the broker")
        # Twice the bound the other test gives up after: only the watchdog thread can be writing now.
        samples = beats_during(heartbeat, 2 * BOUND, worker)
        assert worker.proc.poll() is None, f"the worker exited during the outage:\n{worker.log()[-3000:]}"
        assert None not in samples, "the heartbeat disappeared although WORKER_BROKER_LOST_EXIT_AFTER=0"
        assert distinct_beats(samples, lost_wall) >= 2 * BOUND - 2, samples
        assert time.time() - heartbeat.stat().st_mtime < 2 * INTERVAL + 0.5

        broker.start()  # same port: the worker reconnects and consumes again
        wait_for((health / "ready").exists, 45, "the ready marker after the broker came back")
    finally:
        status = worker.stop()
    assert status == 0, worker.log()[-3000:]
    assert "could not" not in worker.log()


def test_worker_gives_up_when_the_broker_is_never_reached(session_env, run_dir, tmp_path) -> None:
    health = tmp_path / "health"
    nobody = PrivateRedis(tmp_path / "redis", free_port())  # never started: nothing listens on the port
    env = {**os.environ, **worker_env(session_env, nobody, health, BOUND), "PYTHONPATH": str(ROOT)}
    log_path = tmp_path / "worker.log"
    started = time.monotonic()
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "tests.support.worker_app", "worker",
                                 "--pool", "threads", "--concurrency", "1", "--without-gossip", "--without-mingle"],
                                cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        status = proc.wait(BOUND + EXIT_SLACK + 10)  # + the interpreter's start-up
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        status = None
    elapsed = time.monotonic() - started
    log = log_path.read_text(errors="replace")
    assert status == 1, f"exit status {status} after {elapsed:.1f}s:\n{log[-3000:]}"
    assert elapsed >= BOUND
    assert "could not reach the broker" in log
    assert not (health / "heartbeat").exists() and not (health / "ready").exists()


def test_healthcheck_reports_a_killed_worker_at_once(session_env, run_dir, broker, tmp_path) -> None:
    """The heartbeat names its process: once that is gone (here a zombie not yet reaped) the check fails at once,
    although the heartbeat is still fresh; the default WORKER_HEARTBEAT_MAX_AGE bounds a stuck consumer to 10 s."""
    import signal

    from config.options import BY_NAME
    from worker.health.check import healthcheck

    health = tmp_path / "health"
    env = {**worker_env(session_env, broker, health, BOUND), "WORKER_HEARTBEAT_MAX_AGE": "60"}
    worker = start_worker_process(env, run_dir, pool="threads", concurrency=1)
    try:
        wait_for((health / "ready").exists, 15, "the ready marker")
        check_env = {"WORKER_HEALTH_DIR": str(health), "WORKER_HEARTBEAT_MAX_AGE": "60"}
        assert healthcheck(environ=check_env)[0] == 0
        worker.proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: healthcheck(environ=check_env)[0] == 1, 1.0, "the healthcheck to fail")
        assert time.monotonic() - killed < 1.0
        assert "is gone" in healthcheck(environ=check_env)[1]
    finally:
        worker.stop()
    assert int(BY_NAME["WORKER_HEARTBEAT_MAX_AGE"].default) <= 10
    assert int(BY_NAME["WORKER_HEARTBEAT_INTERVAL"].default) < int(BY_NAME["WORKER_HEARTBEAT_MAX_AGE"].default)
