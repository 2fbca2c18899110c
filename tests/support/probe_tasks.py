"""Probe tasks that report the tenant they ran with, reached through every publishing path."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from sqlalchemy import select, text

from worker.base_task import BaseTask
from worker.db.engine import get_engine
from worker.db.models import Test, TestSet
from worker.tenant.context import current_tenant


class TransientError(Exception):
    pass


def _seen(task: BaseTask, **extra: Any) -> dict[str, Any]:
    tenant = current_tenant()
    return {"organization_id": tenant.organization_id, "user_id": tenant.user_id,
            "request_organization_id": getattr(task.request, "organization_id", None),
            "task_id": task.request.id, **extra}


@shared_task(bind=True, base=BaseTask, name="tests.probe.tenant")
def tenant(self: BaseTask, *previous: Any) -> dict[str, Any]:
    return _seen(self, previous=list(previous))


@shared_task(bind=True, base=BaseTask, name="tests.probe.tenant_kw")
def tenant_kw(self: BaseTask, organization_id: str | None = None, user_id: str | None = None) -> dict[str, Any]:
    """Accepts the tenant as kwargs itself (the kwargs then stay kwargs)."""
    return _seen(self, kw_organization_id=organization_id, kw_user_id=user_id)


@shared_task(bind=True, base=BaseTask, name="tests.probe.retry_once")
def retry_once(self: BaseTask) -> dict[str, Any]:
    if self.request.retries == 0:
        raise self.retry(countdown=0)
    return _seen(self, retries=self.request.retries)


@shared_task(bind=True, base=BaseTask, name="tests.probe.autoretry_once", retry_backoff=False, default_retry_delay=0)
def autoretry_once(self: BaseTask) -> dict[str, Any]:
    if self.request.retries == 0:
        raise TransientError("first attempt fails")
    return _seen(self, retries=self.request.retries)


@shared_task(bind=True, base=BaseTask, name="tests.probe.always_fails", retry_backoff=False, default_retry_delay=0,
             max_retries=2)
def always_fails(self: BaseTask) -> None:
    raise TransientError(f"attempt {self.request.retries}")


@shared_task(bind=True, base=BaseTask, name="tests.probe.fail_permanently")
def fail_permanently(self: BaseTask) -> None:
    from worker.errors import TaskConfigurationError

    raise TaskConfigurationError("cannot be fixed by retrying")


@shared_task(bind=True, base=BaseTask, name="tests.probe.fail_quoting", max_retries=0)
def fail_quoting(self: BaseTask, text: str) -> None:
    """Fails with an exception whose message quotes ``text`` (a driver error naming a password, say)."""
    raise RuntimeError(f"could not connect to postgresql://app:{text}@db.internal/app")


@shared_task(bind=True, base=BaseTask, name="tests.probe.errback")
def errback(self: BaseTask, failed_task_id: str) -> dict[str, Any]:
    """A bound errback gets the failed task's id and is published as its own message (the path that drops headers)."""
    return _seen(self, failed_task_id=failed_task_id)


@shared_task(bind=True, base=BaseTask, name="tests.probe.replace_with_tenant")
def replace_with_tenant(self: BaseTask) -> Any:
    raise self.replace(tenant.s())


@shared_task(bind=True, base=BaseTask, name="tests.probe.spawn_child")
def spawn_child(self: BaseTask, organization_id_for_child: str | None = None, countdown: int = 0) -> str:
    """Publish a child from inside a task; it inherits this task's tenant unless it names its own."""
    if organization_id_for_child:
        return tenant.apply_async(headers={"organization_id": organization_id_for_child}, countdown=countdown).id
    return tenant.apply_async(countdown=countdown).id


@shared_task(bind=True, base=BaseTask, name="tests.probe.spawn_with_delay")
def spawn_with_delay(self: BaseTask) -> str:
    return tenant.delay().id


@shared_task(bind=True, name="tests.probe.plain_spawn")
def plain_spawn(self: Any) -> str:
    """A task that is not a BaseTask publishes a tenant probe: it must carry no leftover tenant."""
    return tenant.delay().id


@shared_task(bind=True, base=BaseTask, name="tests.probe.sleep", max_retries=0)
def sleep(self: BaseTask, seconds: float) -> dict[str, Any]:
    import time

    time.sleep(seconds)
    return _seen(self)


@shared_task(bind=True, base=BaseTask, name="tests.probe.outlive_soft_limit", max_retries=0)
def outlive_soft_limit(self: BaseTask, seconds: float) -> dict[str, Any]:
    """Swallows the soft time limit, so that only the hard limit (killing the pool process) can stop it."""
    import time

    from celery.exceptions import SoftTimeLimitExceeded

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            time.sleep(0.05)
        except SoftTimeLimitExceeded:
            continue
    return _seen(self)


@shared_task(bind=True, base=BaseTask, name="tests.probe.db_wait_callback")
def db_wait_callback(self: BaseTask) -> str | None:
    """Which wait callback psycopg2 uses in this worker (psycogreen's under the gevent pool)."""
    from psycopg2 import extensions

    callback = extensions.get_wait_callback()
    return None if callback is None else f"{callback.__module__}.{callback.__name__}"


@shared_task(bind=True, base=BaseTask, name="tests.probe.scan_rows")
def scan_rows(self: BaseTask, queries: int) -> dict[str, Any]:
    """Run tenant-scoped queries; count rows of other tenants and tenant settings left on pooled connections."""
    org = current_tenant().organization_id
    foreign = leaked = rows = 0
    engine = get_engine()
    for i in range(queries):
        if i % 10 == 0:
            # A connection fresh from the pool must carry no tenant from its previous user.
            with engine.connect() as conn:
                leftover = conn.execute(text("select current_setting('app.current_organization', true)")).scalar()
                leaked += 1 if leftover else 0
        with self.get_db_session() as db:
            model = TestSet if i % 2 else Test
            for row_org in db.scalars(select(model.organization_id)):
                rows += 1
                foreign += str(row_org) != org
    return _seen(self, foreign_rows=foreign, leaked_settings=leaked, rows=rows, queries=queries)


@shared_task(bind=True, base=BaseTask, name="tests.probe.gc_frozen")
def gc_frozen(self: BaseTask) -> dict[str, int]:
    """This pool process's pid and how many objects its collector leaves alone (worker/prefork.py)."""
    import gc
    import os

    return {"pid": os.getpid(), "frozen": gc.get_freeze_count()}
