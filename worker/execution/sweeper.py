"""No run stays ``running`` forever: find stalled runs of every organization and set them moving or close them.

A run is stalled when a test's lease expired (its worker died) or nothing touched the run for
``EXECUTION_STALL_SECONDS`` (its lane messages are gone). ``tenant_guard.execution_stalled_runs`` lists their ids
across organizations (ids only: it is the one cross-tenant read, see docs/database.md); everything after that runs
in the run's own tenant session: expired leases go back to pending, a cancelled or finished run is closed, and any
other run gets fresh lane tasks for its free lanes. Run by ``python -m worker sweep``, by the periodic task
``rhesis.backend.tasks.execution.sweep`` (for celery beat) and, every ``EXECUTION_SWEEP_INTERVAL`` seconds, by
one worker at a time inside the workers themselves (a Redis lock).
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from worker.db.engine import get_engine
from worker.db.session import tenant_session
from worker.execution import store
from worker.execution.settings import execution_settings
from worker.tenant.context import Tenant

log = logging.getLogger("worker.execution")

LANE_TASK = "rhesis.backend.tasks.execution.run_lane"
LOCK_KEY = "execution:sweeper-lock"


@dataclass(slots=True)
class SweepReport:
    examined: int = 0
    requeued: list[str] = field(default_factory=list)
    closed: dict[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"examined": self.examined, "requeued": self.requeued, "closed": self.closed}


def stalled_runs(stall_seconds: int) -> list[tuple[uuid.UUID, uuid.UUID | None, uuid.UUID]]:
    with get_engine().connect() as connection:
        rows = connection.execute(text(
            "SELECT organization_id, user_id, test_run_id FROM tenant_guard.execution_stalled_runs(:grace)"),
            {"grace": stall_seconds}).all()
        connection.rollback()
    return [tuple(row) for row in rows]  # type: ignore[misc]


def _settle(db: Session, run_id: uuid.UUID) -> tuple[str, str | None, list[tuple[int, str]]]:
    """('closed', status, []) or ('requeue', None, reserved lanes) or ('busy', None, []) for one run, in its
    tenant's session."""
    db.execute(text("""
        UPDATE public.test_run_item SET state = 'pending', lease_owner = NULL, lease_expires_at = NULL,
               updated_at = now()
        WHERE test_run_id = :run_id AND state = 'running' AND lease_expires_at <= now()
    """), {"run_id": run_id})
    state = store.run_state(db, run_id)
    if state is None or state.status not in store.ACTIVE_RUN_STATUSES:
        return "busy", None, []
    counted = store.progress(db, run_id)
    if counted.remaining + counted.done == 0 and not state.cancel_requested:
        return "busy", None, []  # not seeded yet: its execute message (still queued) does that
    if state.cancel_requested:
        store.cancel_untouched(db, run_id)
    status = store.finalize(db, run_id)
    if status is not None:
        return "closed", status, []
    if state.cancel_requested:
        return "busy", None, []  # calls of a live lane still in flight; it closes the run
    db.execute(text("UPDATE public.test_run SET updated_at = now() WHERE id = :run_id"), {"run_id": run_id})
    settings = execution_settings()
    split = store.lane_split(state.max_concurrency or settings.run_cap, settings.lane_cap)
    reserved = store.reserve_lanes(db, run_id, split, None, settings.lease_seconds)
    # Every lane held: live lanes take the expired tests back themselves.
    return ("requeue", None, reserved) if reserved else ("busy", None, [])


def sweep(app: Any, stall_seconds: int) -> SweepReport:
    report = SweepReport()
    for organization_id, user_id, run_id in stalled_runs(stall_seconds):
        report.examined += 1
        try:
            with tenant_session(organization_id, user_id) as db:
                outcome, status, reserved = _settle(db, run_id)
            if outcome == "closed":
                report.closed[str(run_id)] = str(status)
            elif outcome == "requeue":
                for lane, token in reserved:
                    app.send_task(LANE_TASK, args=[str(run_id)], kwargs={"lane": lane, "token": token},
                                  headers=Tenant.of(organization_id, user_id).headers())
                report.requeued.append(str(run_id))
        except Exception:
            log.exception("sweeper: run %s could not be settled", run_id)
    if report.examined:
        log.info("sweeper: examined %d stalled runs, requeued %d, closed %d", report.examined,
                 len(report.requeued), len(report.closed))
    return report


class SweeperThread:
    """Every ``interval`` seconds, the one worker that takes the Redis lock sweeps."""

    def __init__(self, app: Any, interval: int, stall_seconds: int) -> None:
        self.app = app
        self.interval = interval
        self.stall_seconds = stall_seconds
        self.stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.interval > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="execution-sweeper", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self.stopped.set()

    def _loop(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                with self.app.connection_for_write() as connection:
                    client = connection.default_channel.client
                    prefix = connection.transport_options.get("global_keyprefix", "")
                    if not client.set(f"{prefix}{LOCK_KEY}", "1", nx=True, ex=max(1, self.interval - 1)):
                        continue
                sweep(self.app, self.stall_seconds)
            except Exception:
                log.warning("sweeper: this round failed; trying again in %d s", self.interval, exc_info=True)
