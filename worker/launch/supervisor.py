"""The worker and Flower in one container (ENABLE_FLOWER=yes): start both, forward signals, stop together.

The guarantees (docs/container.md, tests/container/test_entrypoint.py):

* SIGTERM and SIGINT mean a warm shutdown: both children get SIGTERM, once (Celery exits 1 after SIGINT but 0
  after SIGTERM, and a second signal would turn its warm shutdown into a cold one). SIGQUIT goes to the worker as
  SIGQUIT (cold shutdown), to Flower as SIGTERM.
* A signal that arrives while the children are being started is forwarded once both run.
* When either child exits on its own, the other gets SIGTERM; the exit status is that of the first one. When we
  were asked to stop, it is the worker's if non-zero, else Flower's. A child killed by a signal counts as 128+N.
* Only the two children are signalled, by pid (never the process group).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import Sequence
from types import FrameType

log = logging.getLogger("entrypoint")

FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


def exit_status(wait_status: int) -> int:
    """A shell's view of a child's end: its exit code, or 128 + the signal that killed it."""
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.waitstatus_to_exitcode(wait_status)


class Supervisor:
    def __init__(self, worker_argv: Sequence[str], worker_env: dict[str, str], flower_argv: Sequence[str],
                 flower_env: dict[str, str]) -> None:
        self.commands = {"worker": (list(worker_argv), worker_env), "Flower": (list(flower_argv), flower_env)}
        self.pids: dict[str, int] = {}
        # Kept referenced: a collected, still-running Popen would be polled (and its status stolen) by subprocess.
        self.procs: list[subprocess.Popen] = []
        self.stopping = False
        self.forwarded = False
        self.pending: int | None = None

    # -- signals ---------------------------------------------------------------------------------------
    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True
        self.pending = signum
        if len(self.pids) == 2:
            self._forward(signum)
        # else: run() forwards once both children are started.

    def _forward(self, signum: int) -> None:
        if self.forwarded and signum != signal.SIGQUIT:
            return  # signalled once already: a second TERM/INT would turn the warm shutdown into a cold one
        self.forwarded = True
        name = signal.Signals(signum).name
        log.info("%s received: forwarding to the worker (pid %d) and Flower (pid %d)", name, self.pids["worker"],
                 self.pids["Flower"])
        self._kill("worker", signal.SIGQUIT if signum == signal.SIGQUIT else signal.SIGTERM)
        self._kill("Flower", signal.SIGTERM)

    def _kill(self, name: str, signum: int) -> None:
        try:
            os.kill(self.pids[name], signum)
        except ProcessLookupError:
            pass  # already gone (reaped by us, so the pid cannot have been reused)

    # -- children --------------------------------------------------------------------------------------
    def _start(self, name: str) -> None:
        argv, env = self.commands[name]
        # Popen resolves argv[0] ("celery") on PATH; the children get default signal dispositions back.
        proc = subprocess.Popen(argv, env=env)
        self.procs.append(proc)
        self.pids[name] = proc.pid

    def _wait_any(self, names: Sequence[str]) -> tuple[str, int]:
        """Reap children until one of ``names`` ends (os.waitpid resumes after our signal handler ran)."""
        wanted = {self.pids[name]: name for name in names}
        while True:
            pid, status = os.waitpid(-1, 0)
            for proc in self.procs:
                if proc.pid == pid:
                    proc.returncode = exit_status(status)  # reaped here, not by subprocess
            if pid in wanted:
                return wanted[pid], exit_status(status)

    def run(self) -> int:
        for signum in FORWARDED_SIGNALS:
            signal.signal(signum, self._on_signal)
        self._start("worker")
        self._start("Flower")
        log.info("supervising the worker (pid %d) and Flower (pid %d)", self.pids["worker"], self.pids["Flower"])
        if self.pending is not None:
            self._forward(self.pending)  # a signal that arrived while the children were starting

        first, first_status = self._wait_any(("worker", "Flower"))
        other = "Flower" if first == "worker" else "worker"
        if self.stopping:
            # Both were signalled already; a second signal would turn the worker's warm shutdown into a cold one.
            log.info("%s exited with status %d; waiting for %s", first, first_status, other)
        else:
            log.info("%s exited with status %d; stopping %s", first, first_status, other)
            self.forwarded = True  # a later SIGTERM must not reach the worker a second time
            self._kill(other, signal.SIGTERM)
        _, other_status = self._wait_any((other,))
        log.info("%s exited with status %d", other, other_status)
        if not self.stopping:
            return first_status
        # Asked to stop: report the worker's result (a failed warm shutdown), else Flower's.
        statuses = {first: first_status, other: other_status}
        return statuses["worker"] or statuses["Flower"]
