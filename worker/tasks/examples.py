"""Tasks that show the tenant context at work: plain, with an injected session, and with a manual one."""

from __future__ import annotations

import uuid
from typing import Any

from celery import shared_task
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from worker.base_task import BaseTask, with_tenant_context
from worker.db.models import TestConfiguration, TestSet
from worker.db.once import once_per_task
from worker.errors import InvalidIdentifierError
from worker.tenant.context import current_tenant

UNKNOWN = "unknown"


@shared_task(bind=True, base=BaseTask, name="rhesis.backend.tasks.echo")
def echo(self: BaseTask, message: str) -> str:
    """Needs no tenant; reports the one it runs for."""
    tenant = current_tenant()
    return f"Message: {message}, Organization: {tenant.organization_id or UNKNOWN}, User: {tenant.user_id or UNKNOWN}"


@shared_task(bind=True, base=BaseTask, name="rhesis.backend.tasks.count_test_sets")
@with_tenant_context
def count_test_sets(self: BaseTask, db: Session) -> dict[str, Any]:
    tenant = current_tenant()
    count = db.scalar(select(func.count()).select_from(TestSet))
    return {"count": count, "organization_id": tenant.organization_id, "user_id": tenant.user_id}


@shared_task(bind=True, base=BaseTask, name="rhesis.backend.tasks.get_test_configuration")
@with_tenant_context
def get_test_configuration(self: BaseTask, test_configuration_id: str, db: Session) -> dict[str, Any]:
    """Another tenant's configuration is simply not found."""
    try:
        wanted = uuid.UUID(str(test_configuration_id))
    except ValueError:
        raise InvalidIdentifierError(f"test_configuration_id {test_configuration_id!r} is not a valid UUID") from None
    found = db.get(TestConfiguration, wanted)
    return {"found": found is not None, "id": str(wanted)}


@shared_task(bind=True, base=BaseTask, name="rhesis.backend.tasks.manual_db_example")
def manual_db_example(self: BaseTask) -> dict[str, int]:
    with self.get_db_session() as db:
        return {"test_set_count": db.scalar(select(func.count()).select_from(TestSet)) or 0}


@shared_task(bind=True, base=BaseTask, name="rhesis.backend.tasks.create_test_set")
@with_tenant_context
@once_per_task
def create_test_set(self: BaseTask, name: str, db: Session, description: str | None = None) -> dict[str, Any]:
    """A writing task whose effect happens once per message, however often the message is delivered; a repeated
    delivery returns None (see worker/db/once.py)."""
    tenant = current_tenant()
    test_set = TestSet(organization_id=uuid.UUID(tenant.organization_id), name=name, description=description)
    db.add(test_set)
    db.flush()
    return {"id": str(test_set.id), "name": name}
