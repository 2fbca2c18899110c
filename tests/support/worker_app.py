"""The product app plus probe tasks, for worker processes started by the tests."""

from tests.support import probe_tasks  # noqa: F401 - registers the probes
from worker.app import app

__all__ = ["app"]
