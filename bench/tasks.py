"""No-op tasks: the baseline is a plain Celery task, the candidate goes through BaseTask and the tenant path."""

from celery import Task, shared_task

from worker.base_task import BaseTask


@shared_task(bind=True, base=Task, name="bench.noop_plain")
def noop_plain(self: Task) -> None:
    return None


@shared_task(bind=True, base=BaseTask, name="bench.noop_tenant")
def noop_tenant(self: BaseTask) -> None:
    return None
