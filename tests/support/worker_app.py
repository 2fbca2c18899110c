"""The product app plus probe tasks, for worker processes started by the tests."""

from tests.support import control, probe_tasks  # noqa: F401 - registers the probes and the pool report
from worker.app import app

__all__ = ["app"]
