"""What the test session's own service processes (workers, the API) share: their log file and a bounded stop."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import ClassVar


class LoggedProcess:
    """A child process whose stdout and stderr go to ``log_path``; subclasses are dataclasses that set both."""

    proc: subprocess.Popen
    log_path: Path
    #: Seconds ``stop`` waits after SIGTERM before it kills the process (a worker's warm shutdown lets its running
    #: tasks finish first).
    stop_timeout: ClassVar[float] = 60

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float | None = None) -> int:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout`` (``stop_timeout``); its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode
