"""The test worker app plus a task that accepts any arguments, the target of the fuzzed messages."""

from typing import Any

from celery import shared_task

from tests.support.worker_app import app


@shared_task(name="tests.poison.accept_anything")
def accept_anything(*args: Any, **kwargs: Any) -> None:
    """A well-formed fuzzed message runs this and succeeds, whatever its arguments."""


__all__ = ["accept_anything", "app"]
