"""Create or find the run an ``execute_test_configuration`` message stands for.

The run is keyed by the message's task id (a unique index per organization), so a redelivered or retried message
continues the run it made instead of starting a second one. A producer may pre-create the run and pass its id.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from worker.db.models import TestConfiguration, TestRun
from worker.errors import InvalidIdentifierError, PermanentTaskError
from worker.execution import store


class RunNotFoundError(PermanentTaskError):
    """The configuration or run does not exist for this organization (or belongs to another one)."""


@dataclass(frozen=True, slots=True)
class StartedRun:
    id: uuid.UUID
    status: str
    total_tests: int
    created: bool


def parse_id(value: object, name: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise InvalidIdentifierError(f"{name} {str(value)[:80]!r} is not a valid UUID") from None


def start_run(db: Session, *, organization_id: str, user_id: str | None, test_configuration_id: object,
              task_id: str, test_run_id: object = None) -> StartedRun:
    """The run of this message: found by task id (or by ``test_run_id`` when the producer made it), else created;
    its items are seeded from the test set either way (idempotent)."""
    configuration_id = parse_id(test_configuration_id, "test_configuration_id")
    configuration = db.get(TestConfiguration, configuration_id)
    if configuration is None:
        raise RunNotFoundError(f"test configuration {configuration_id} does not exist in this organization")
    run = db.scalars(select(TestRun).where(TestRun.task_id == task_id)).one_or_none()
    created = False
    if run is None and test_run_id is not None:
        run = db.get(TestRun, parse_id(test_run_id, "test_run_id"))
        if run is None:
            raise RunNotFoundError(f"test run {test_run_id} does not exist in this organization")
        if run.test_configuration_id != configuration_id:
            raise RunNotFoundError(f"test run {run.id} belongs to another test configuration")
        if run.task_id is None:
            run.task_id = task_id
    if run is None:
        # Two deliveries of one message racing: the unique (organization_id, task_id) index lets one insert win.
        inserted = db.execute(text("""
            INSERT INTO public.test_run (organization_id, user_id, test_configuration_id, status, task_id)
            VALUES (:org, :user, :conf, 'queued', :task_id)
            ON CONFLICT (organization_id, task_id) WHERE task_id IS NOT NULL DO NOTHING
            RETURNING id
        """), {"org": organization_id, "user": user_id, "conf": configuration_id, "task_id": task_id}).scalar()
        created = inserted is not None
        run = db.scalars(select(TestRun).where(TestRun.task_id == task_id)).one()
    # A run is created and seeded in one transaction; a run the producer pre-created has no items yet.
    seeding = run.status in store.ACTIVE_RUN_STATUSES and (created or run.total_tests == 0)
    total = store.seed_items(db, run.id, configuration.test_set_id) if seeding else run.total_tests
    db.flush()
    db.refresh(run)
    return StartedRun(id=run.id, status=run.status, total_tests=total, created=created)
