"""Every log line emitted while a task runs carries task id, task name, organization and user."""

from __future__ import annotations

import logging
import re

from celery import current_task
from celery.signals import after_setup_logger, after_setup_task_logger

from worker.tenant.context import current_tenant

# Longer values (ids are 36 characters) are cut: a producer's oversized header must not flood every log line.
_MAX_FIELD_LENGTH = 80


def printable(value: object, limit: int = _MAX_FIELD_LENGTH) -> str:
    """A message value (tenant header, task id, error text) as one printable line: control characters, newlines
    included, become escapes, so that a value from a message cannot forge log lines."""
    text = str(value).encode("unicode_escape", "backslashreplace").decode("ascii")
    return text if len(text) <= limit else text[:limit] + "..."


# Control characters and the line breaks that str.splitlines() and log viewers honour.
_LINE_BREAKING = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029]")


def _escaped(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


class OneLineFormatter(logging.Formatter):
    """Writes every record's message on one line: messages quote message values (Celery's own "Task name[id]
    received" lines quote the task id), which must not start a forged line. Tracebacks keep their lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = _LINE_BREAKING.sub(_escaped, record.message)
        return super().formatMessage(record)


LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(name)s:%(task_context)s %(message)s"


class TaskContextFilter(logging.Filter):
    """Adds ``task_context`` (empty outside tasks) and the four fields separately for structured handlers."""

    def filter(self, record: logging.LogRecord) -> bool:
        task = current_task
        request = task.request if task else None
        task_id = getattr(request, "id", None) if request else None
        tenant = current_tenant()
        # Ids come from the message: the headers of a task that failed before its tenant was validated are raw.
        record.task_id = printable(task_id or "-")
        record.task_name = printable((task.name if task and task_id else None) or "-")
        record.organization_id = printable(tenant.organization_id or getattr(request, "organization_id", None) or "-")
        record.user_id = printable(tenant.user_id or getattr(request, "user_id", None) or "-")
        if task_id:
            record.task_context = (f" [task_id={record.task_id} task={record.task_name} "
                                   f"organization_id={record.organization_id} user_id={record.user_id}]")
        else:
            record.task_context = ""
        return True


def install_filter(logger: logging.Logger) -> None:
    for handler in logger.handlers:
        if not any(isinstance(f, TaskContextFilter) for f in handler.filters):
            handler.addFilter(TaskContextFilter())
            handler.setFormatter(OneLineFormatter(LOG_FORMAT))


@after_setup_logger.connect(weak=False, dispatch_uid="worker.logging_context.root")
@after_setup_task_logger.connect(weak=False, dispatch_uid="worker.logging_context.task")
def _on_setup_logger(logger: logging.Logger, **_: object) -> None:
    install_filter(logger)
    from worker.settings import get_settings

    # LOG_LEVEL governs our own loggers (worker.*); CELERY_WORKER_LOGLEVEL governs Celery's.
    logging.getLogger("worker").setLevel(get_settings().log_level)
