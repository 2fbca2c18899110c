"""Cancel a run: nothing new starts, untouched tests are stored ``cancelled``, finished results stay.

Lanes see the request within half a second and cancel their calls in flight; when no lane holds a live lease
the run is closed here at once. A lane that died holding leases leaves them to expire: the sweeper closes the run.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy.orm import Session

from worker.execution import store


@dataclass(frozen=True, slots=True)
class CancelOutcome:
    test_run_id: uuid.UUID
    #: None when this organization has no such run.
    status: str | None
    found: bool


def cancel_test_run(db: Session, test_run_id: uuid.UUID) -> CancelOutcome:
    """Request cancellation of ``test_run_id`` in the session's organization; another organization's run is
    simply not found. Idempotent: a final run is left as it is."""
    status = store.request_cancel(db, test_run_id)
    if status is None:
        return CancelOutcome(test_run_id, None, found=False)
    if status in store.ACTIVE_RUN_STATUSES:
        store.cancel_untouched(db, test_run_id)
        # Lanes still hold calls in flight: they stop them and the last one closes the run.
        status = store.finalize(db, test_run_id) or "cancelling"
    return CancelOutcome(test_run_id, status, found=True)
