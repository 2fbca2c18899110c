"""Every log line emitted while a task runs carries task id, task name, organization and user."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime

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


class JsonFormatter(logging.Formatter):
    """One JSON object per line (``LOG_FORMAT=json``). json.dumps with ensure_ascii escapes every control and
    non-ASCII character, so a message value can neither break the line nor add or overwrite a field: each value is
    one JSON string under a key chosen here. The tenant fields stay cut like in the text format."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.processName,
        }
        for field in ("task_id", "task_name", "organization_id", "user_id", "run_id"):
            value = getattr(record, field, "-")
            if value != "-":
                entry[field] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=True, default=str)


# Tasks whose first positional argument is the run id (the names are the wire contract: worker/tasks/execution.py).
_RUN_FIRST_ARGUMENT = frozenset({"rhesis.backend.tasks.execution.run_lane",
                                 "rhesis.backend.tasks.execution.cancel_test_run"})


def _run_id(request: object) -> str | None:
    """The execution run a task works on: the tasks of worker/tasks/execution.py take it as ``test_run_id``."""
    kwargs = getattr(request, "kwargs", None)
    if isinstance(kwargs, dict) and kwargs.get("test_run_id"):
        return str(kwargs["test_run_id"])
    args = getattr(request, "args", None)
    if isinstance(args, (list, tuple)) and args and getattr(request, "task", None) in _RUN_FIRST_ARGUMENT:
        return str(args[0])
    return None


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
        run_id = _run_id(request) if task_id else None
        record.run_id = printable(run_id or "-")
        if task_id:
            record.task_context = (f" [task_id={record.task_id} task={record.task_name} "
                                   f"organization_id={record.organization_id} user_id={record.user_id}]")
        else:
            record.task_context = ""
        return True


def make_formatter(log_format: str = "text") -> logging.Formatter:
    """The formatter of ``LOG_FORMAT``: ``json`` or the readable one-line ``text``."""
    return JsonFormatter() if log_format == "json" else OneLineFormatter(LOG_FORMAT)


def install_filter(logger: logging.Logger, log_format: str = "text") -> None:
    for handler in logger.handlers:
        if not any(isinstance(f, TaskContextFilter) for f in handler.filters):
            handler.addFilter(TaskContextFilter())
            handler.setFormatter(make_formatter(log_format))


@after_setup_logger.connect(weak=False, dispatch_uid="worker.logging_context.root")
@after_setup_task_logger.connect(weak=False, dispatch_uid="worker.logging_context.task")
def _on_setup_logger(logger: logging.Logger, **_: object) -> None:
    from worker.settings import get_settings

    install_filter(logger, get_settings().log_format)
    # LOG_LEVEL governs our own loggers (worker.*); CELERY_WORKER_LOGLEVEL governs Celery's.
    logging.getLogger("worker").setLevel(get_settings().log_level)
