"""Every log line emitted while a task runs carries task id, task name, organization and user."""

from __future__ import annotations

import logging

from celery import current_task
from celery.signals import after_setup_logger, after_setup_task_logger

from worker.tenant.context import current_tenant

LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(name)s:%(task_context)s %(message)s"


class TaskContextFilter(logging.Filter):
    """Adds ``task_context`` (empty outside tasks) and the four fields separately for structured handlers."""

    def filter(self, record: logging.LogRecord) -> bool:
        task = current_task
        request = task.request if task else None
        task_id = getattr(request, "id", None) if request else None
        tenant = current_tenant()
        record.task_id = task_id or "-"
        record.task_name = (task.name if task and task_id else None) or "-"
        record.organization_id = tenant.organization_id or (getattr(request, "organization_id", None) or "-")
        record.user_id = tenant.user_id or (getattr(request, "user_id", None) or "-")
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
            handler.setFormatter(logging.Formatter(LOG_FORMAT))


@after_setup_logger.connect(weak=False, dispatch_uid="worker.logging_context.root")
@after_setup_task_logger.connect(weak=False, dispatch_uid="worker.logging_context.task")
def _on_setup_logger(logger: logging.Logger, **_: object) -> None:
    install_filter(logger)
    from worker.settings import get_settings

    # LOG_LEVEL governs our own loggers (worker.*); CELERY_WORKER_LOGLEVEL governs Celery's.
    logging.getLogger("worker").setLevel(get_settings().log_level)
