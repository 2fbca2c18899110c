"""The files a worker keeps in ``WORKER_HEALTH_DIR``; stdlib only, so that the healthcheck imports nothing else."""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("worker.health")

HEARTBEAT = "heartbeat"  # rewritten while the consumer is alive; its mtime is the beat
READY = "ready"  # exists while the worker consumes at least one queue
NODE = "node"  # the node name, for drain
ROLE = "role"  # what the container runs: "worker" (heartbeat), "flower" (Flower's /healthcheck) or "api" (/healthz)
API_PORT = "api-port"  # the port the API listens on, for the healthcheck


class HealthFiles:
    """Atomic writes and quiet removals in one health directory; each failure is logged once."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self._failed_writes: set[str] = set()

    def path(self, name: str) -> Path:
        return self.directory / name

    def create_directory(self) -> bool:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.error("cannot create WORKER_HEALTH_DIR %s (%s): the healthcheck will report unhealthy",
                      self.directory, exc.strerror)
            return False
        return True

    def write(self, name: str, content: str) -> bool:
        path = self.path(name)
        tmp = path.with_name(f".{name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(content)
            os.replace(tmp, path)  # atomic: a reader never sees half a file; mtime is the beat
        except OSError as exc:
            if name not in self._failed_writes:
                self._failed_writes.add(name)
                log.error("cannot write %s (%s): the healthcheck will report unhealthy", path, exc.strerror)
            return False
        self._failed_writes.discard(name)
        return True

    def remove(self, name: str) -> None:
        try:
            self.path(name).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove %s (%s)", self.path(name), exc.strerror)

    def exists(self, name: str) -> bool:
        return self.path(name).exists()

    def read(self, name: str) -> str:
        """The file's first line, or "" when it is missing or unreadable."""
        try:
            return self.path(name).read_text().strip()
        except OSError:
            return ""

    def start_role(self, role: str) -> bool:
        """Record what this container runs and forget an earlier process's beats."""
        if not (self.create_directory() and self.write(ROLE, role + "\n")):
            return False
        self.remove(HEARTBEAT)
        self.remove(READY)
        return True
