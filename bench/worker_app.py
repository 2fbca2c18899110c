"""The product app plus the benchmark tasks."""

from bench import tasks  # noqa: F401 - registers the benchmark tasks
from worker.app import app

__all__ = ["app"]
