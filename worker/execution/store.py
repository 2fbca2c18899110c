"""The durable state of a run in PostgreSQL: seeding, claiming with leases, storing results, finalising.

Every function takes a tenant session (row-level security scopes it) and runs inside the caller's transaction.
A test moves ``pending -> running (lease) -> done`` in ``test_run_item``; its result is written in the same
transaction that moves it to ``done``, and only by the holder of its lease, so a result is stored once and a stored
test is never claimed again. Claims lock the run row, which serialises them per run and makes the per-run cap of
calls in flight exact across workers; an endpoint-wide cap is taken under a transaction advisory lock per endpoint.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import Session

from worker.observability import observe_stored_results

#: Run statuses after which nothing changes any more.
FINAL_RUN_STATUSES = ("completed", "partial", "failed", "cancelled")
ACTIVE_RUN_STATUSES = ("queued", "running")
RESULT_STATUSES = ("pass", "fail", "error", "not_scored", "cancelled")

_UUIDS = ARRAY(UUID(as_uuid=True))
#: A test claimed this often without a result (each worker running it died or was stopped) is stored as an error
#: instead of being handed to the next worker: one poisonous test must not take the workers down one by one.
MAX_CLAIMS = 3


def storable(value: Any) -> Any:
    """``value`` with every string made storable: PostgreSQL refuses NUL characters and unpaired surrogates in
    text and jsonb, and an endpoint's answer may contain either."""
    if isinstance(value, str):
        if "\x00" in value:
            value = value.replace("\x00", "\ufffd")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            value = value.encode("utf-8", "replace").decode("utf-8")
        return value
    if isinstance(value, dict):
        return {storable(key): storable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [storable(item) for item in value]
    return value


@dataclass(frozen=True, slots=True)
class RunState:
    id: uuid.UUID
    status: str
    cancel_requested: bool
    test_configuration_id: uuid.UUID
    endpoint_id: uuid.UUID
    max_concurrency: int | None
    endpoint_max_concurrency: int | None


@dataclass(frozen=True, slots=True)
class Progress:
    pending: int
    running: int
    done: int

    @property
    def remaining(self) -> int:
        return self.pending + self.running


@dataclass(frozen=True, slots=True)
class StoredResult:
    """One test's outcome as the lane hands it to :func:`store_results`."""

    test_id: uuid.UUID
    status: str
    output: str | None = None
    reason: str | None = None
    error_type: str | None = None
    http_status: int | None = None
    latency_ms: float | None = None
    attempts: int = 0
    score: float | None = None
    metrics: Sequence[dict[str, Any]] = ()
    details: dict[str, Any] | None = None


_RUN_STATE = text("""
    SELECT r.id, r.status, r.cancel_requested_at IS NOT NULL AS cancel_requested, r.test_configuration_id,
           c.endpoint_id, c.max_concurrency, e.max_concurrency AS endpoint_max_concurrency
    FROM public.test_run r
    JOIN public.test_configuration c ON c.id = r.test_configuration_id AND c.organization_id = r.organization_id
    JOIN public.endpoint e ON e.id = c.endpoint_id AND e.organization_id = c.organization_id
    WHERE r.id = :run_id
""")


def run_state(db: Session, run_id: uuid.UUID, *, lock: bool = False) -> RunState | None:
    """The run with what claiming needs; ``lock`` takes the run row (serialises claims of one run)."""
    # NO KEY UPDATE: serialises claimers and closers of one run, but does not conflict with the KEY SHARE lock
    # that inserting a result (its foreign key) takes on the run row; FOR UPDATE would, and deadlock with it.
    statement = _RUN_STATE.text + (" FOR NO KEY UPDATE OF r" if lock else "")
    row = db.execute(text(statement), {"run_id": run_id}).one_or_none()
    return None if row is None else RunState(*row)


def seed_items(db: Session, run_id: uuid.UUID, test_set_id: uuid.UUID) -> int:
    """One pending item per test of the set (idempotent); returns how many tests the run has."""
    db.execute(text("""
        INSERT INTO public.test_run_item (organization_id, test_run_id, test_id)
        SELECT t.organization_id, :run_id, t.id FROM public.test t WHERE t.test_set_id = :test_set_id
        ON CONFLICT DO NOTHING
    """), {"run_id": run_id, "test_set_id": test_set_id})
    total = db.scalar(text("SELECT count(*) FROM public.test_run_item WHERE test_run_id = :run_id"),
                      {"run_id": run_id}) or 0
    db.execute(text("UPDATE public.test_run SET total_tests = :total, updated_at = now() WHERE id = :run_id"),
               {"run_id": run_id, "total": total})
    return int(total)


def progress(db: Session, run_id: uuid.UUID) -> Progress:
    row = db.execute(text("""
        SELECT count(*) FILTER (WHERE state = 'pending'), count(*) FILTER (WHERE state = 'running'),
               count(*) FILTER (WHERE state = 'done')
        FROM public.test_run_item WHERE test_run_id = :run_id
    """), {"run_id": run_id}).one()
    return Progress(*(int(n) for n in row))


def claimable(db: Session, run_id: uuid.UUID) -> int:
    """Tests a lane could claim now, caps aside: pending, or leased by a worker that is gone."""
    return int(db.scalar(text("""
        SELECT count(*) FROM public.test_run_item WHERE test_run_id = :run_id
        AND (state = 'pending' OR (state = 'running' AND lease_expires_at <= now()))
    """), {"run_id": run_id}) or 0)


def _running(db: Session, run_id: uuid.UUID, ignoring_owner: str | None = None) -> int:
    return int(db.scalar(text("""
        SELECT count(*) FROM public.test_run_item
        WHERE test_run_id = :run_id AND state = 'running' AND lease_expires_at > now()
          AND lease_owner IS DISTINCT FROM :ignoring
    """), {"run_id": run_id, "ignoring": ignoring_owner}) or 0)


def _endpoint_running(db: Session, endpoint_id: uuid.UUID) -> int:
    return int(db.scalar(text("""
        SELECT count(*) FROM public.test_run_item i
        JOIN public.test_run r ON r.id = i.test_run_id AND r.organization_id = i.organization_id
        JOIN public.test_configuration c ON c.id = r.test_configuration_id AND c.organization_id = r.organization_id
        WHERE c.endpoint_id = :endpoint_id AND i.state = 'running' AND i.lease_expires_at > now()
    """), {"endpoint_id": endpoint_id}) or 0)


def claim(db: Session, run_id: uuid.UUID, owner: str, want: int, *, run_cap: int,
          lease_seconds: int) -> list[uuid.UUID]:
    """Lease up to ``want`` claimable tests (pending, or running with an expired lease) to ``owner``.

    Nothing is claimed for a run that is final or being cancelled. The run's cap (its configuration's, else
    ``run_cap``) and the endpoint's cap bound the tests leased at once, counted over every worker.
    """
    return _claim(db, run_state(db, run_id, lock=True), owner, want, run_cap=run_cap, lease_seconds=lease_seconds)


def _claim(db: Session, state: RunState | None, owner: str, want: int, *, run_cap: int | None,
           lease_seconds: int) -> list[uuid.UUID]:
    """:func:`claim` for a run row this transaction already locked. ``run_cap`` None: the caller is a lane, whose
    share bounds its calls in flight; it may lease ahead of its calls."""
    if state is None or state.status not in ACTIVE_RUN_STATUSES or state.cancel_requested or want <= 0:
        return []
    run_id = state.id
    if run_cap is not None:
        want = min(want, (state.max_concurrency or run_cap) - _running(db, run_id))
    if state.endpoint_max_concurrency is not None and want > 0:
        # Runs of different configurations share the endpoint: one claimer at a time counts its calls.
        db.execute(text("SELECT pg_advisory_xact_lock(hashtextextended('execution.endpoint:' || :e, 0))"),
                   {"e": str(state.endpoint_id)})
        want = min(want, state.endpoint_max_concurrency - _endpoint_running(db, state.endpoint_id))
    if want <= 0:
        return []
    _give_up_on_poisonous(db, run_id)
    rows = db.execute(text("""
        UPDATE public.test_run_item i
        SET state = 'running', lease_owner = :owner, lease_expires_at = now() + make_interval(secs => :lease),
            claims = i.claims + 1, updated_at = now()
        FROM (
            SELECT test_run_id, test_id FROM public.test_run_item
            WHERE test_run_id = :run_id AND claims < :max_claims
              AND (state = 'pending' OR (state = 'running' AND lease_expires_at <= now()))
            LIMIT :want FOR UPDATE SKIP LOCKED
        ) AS picked
        WHERE i.test_run_id = picked.test_run_id AND i.test_id = picked.test_id
        RETURNING i.test_id
    """), {"run_id": run_id, "owner": owner, "lease": lease_seconds, "want": want,
           "max_claims": MAX_CLAIMS}).scalars().all()
    if rows and state.status == "queued":
        db.execute(text("""
            UPDATE public.test_run SET status = 'running', started_at = coalesce(started_at, now()),
                   updated_at = now()
            WHERE id = :run_id AND status = 'queued'
        """), {"run_id": run_id})
    return list(rows)


def _give_up_on_poisonous(db: Session, run_id: uuid.UUID) -> None:
    ids = db.execute(text("""
        SELECT test_id FROM public.test_run_item
        WHERE test_run_id = :run_id AND claims >= :max_claims
          AND (state = 'pending' OR (state = 'running' AND lease_expires_at <= now()))
        FOR UPDATE SKIP LOCKED
    """), {"run_id": run_id, "max_claims": MAX_CLAIMS}).scalars().all()
    if ids:
        reason = (f"claimed {MAX_CLAIMS} times without a result: each worker that ran this test died or was "
                  "stopped before storing it")
        store_results(db, run_id, None, [StoredResult(test_id=i, status="error", error_type="internal",
                                                      reason=reason) for i in ids])


# -- lanes ---------------------------------------------------------------------------------------------------------
# A run's cap is split into lanes (``lane_shares``); a lane task leases one lane row for its life and keeps at most
# that lane's share of calls in flight, so the cap bounds calls, not leases, and a lane may lease tests ahead.

def lane_count(run_cap: int, lane_cap: int) -> int:
    return max(1, -(-run_cap // lane_cap))


def lane_share(run_cap: int, lanes: int, lane: int) -> int:
    """Lane ``lane``'s part of ``run_cap`` split over ``lanes`` lanes as evenly as possible (sums to the cap)."""
    return run_cap // lanes + (1 if lane < run_cap % lanes else 0)


def lane_split(run_cap: int, lane_cap: int) -> list[int]:
    """The shares of ``run_cap`` in lanes of at most ``lane_cap``."""
    lanes = lane_count(run_cap, lane_cap)
    return [lane_share(run_cap, lanes, lane) for lane in range(lanes)]


_FREE_LANE = "(owner IS NULL OR lease_expires_at IS NULL OR lease_expires_at <= now())"


def ensure_lanes(db: Session, run_id: uuid.UUID, shares: Sequence[int]) -> None:
    """Make the run's lanes with ``shares`` unless it has lanes already: the first split stands (under the run
    row's lock), so workers configured with different lane sizes never split one cap twice."""
    exists = "SELECT 1 FROM public.test_run_lane WHERE test_run_id = :run_id LIMIT 1"
    if db.scalar(text(exists), {"run_id": run_id}) is not None:
        return
    if db.scalar(text("SELECT 1 FROM public.test_run WHERE id = :run_id FOR NO KEY UPDATE"),
                 {"run_id": run_id}) is None:
        return  # not this tenant's run (or gone)
    db.execute(text(f"""
        INSERT INTO public.test_run_lane (organization_id, test_run_id, lane, share)
        SELECT r.organization_id, r.id, s.lane - 1, s.share
        FROM public.test_run r, unnest(CAST(:shares AS integer[])) WITH ORDINALITY AS s(share, lane)
        WHERE r.id = :run_id AND NOT EXISTS ({exists})
    """), {"run_id": run_id, "shares": list(shares)})


def reserve_lanes(db: Session, run_id: uuid.UUID, shares: Sequence[int], count: int | None, lease_seconds: int,
                  *, first: int | None = None) -> list[tuple[int, str]]:
    """Reserve up to ``count`` free lanes (never leased, released, or whose lease expired) for lane tasks about to
    be sent; returns ``(lane, token)`` pairs, ``first`` first when it is free. A reservation the task never takes
    (its message was lost) expires like a lease. ``shares`` makes the lanes if the run has none yet; ``count``
    None reserves every free lane."""
    if count is not None and count <= 0:
        return []
    ensure_lanes(db, run_id, shares)
    rows = db.execute(text(f"""
        UPDATE public.test_run_lane l
        SET owner = 'reserved:' || gen_random_uuid(), lease_expires_at = now() + make_interval(secs => :lease),
            updated_at = now()
        FROM (
            SELECT test_run_id, lane FROM public.test_run_lane
            WHERE test_run_id = :run_id AND {_FREE_LANE}
            ORDER BY lane IS DISTINCT FROM :first, lane LIMIT :count FOR UPDATE SKIP LOCKED
        ) AS picked
        WHERE l.test_run_id = picked.test_run_id AND l.lane = picked.lane
        RETURNING l.lane, l.owner
    """), {"run_id": run_id, "count": count, "lease": lease_seconds, "first": first}).all()
    return sorted((int(lane), str(token)) for lane, token in rows)


def take_lane(db: Session, run_id: uuid.UUID, owner: str, shares: Sequence[int], lease_seconds: int, *,
              lane: int | None = None, token: str | None = None) -> tuple[int, int] | None:
    """Lease a lane to ``owner``: the one reserved for ``token`` if it still is (or is free), else any free lane;
    returns ``(lane, share)``, or None when every lane is held (by live lanes, or reserved for their successors).
    ``shares`` makes the lanes if the run has none yet."""
    ensure_lanes(db, run_id, shares)
    params = {"run_id": run_id, "owner": owner, "lease": lease_seconds}
    mine = db.execute(text("SELECT lane, share FROM public.test_run_lane WHERE test_run_id = :run_id "
                           "AND owner = :owner"), params).first()
    if mine is not None:
        return int(mine[0]), int(mine[1])  # a retried transaction whose first commit went through
    if lane is not None:
        taken = db.execute(text(f"""
            UPDATE public.test_run_lane SET owner = :owner,
                   lease_expires_at = now() + make_interval(secs => :lease), updated_at = now()
            WHERE test_run_id = :run_id AND lane = :lane AND (owner = :token OR {_FREE_LANE})
            RETURNING lane, share
        """), {**params, "lane": lane, "token": token}).first()
        if taken is not None:
            return int(taken[0]), int(taken[1])
    taken = db.execute(text(f"""
        UPDATE public.test_run_lane l SET owner = :owner,
               lease_expires_at = now() + make_interval(secs => :lease), updated_at = now()
        FROM (
            SELECT test_run_id, lane FROM public.test_run_lane
            WHERE test_run_id = :run_id AND {_FREE_LANE}
            ORDER BY lane LIMIT 1 FOR UPDATE SKIP LOCKED
        ) AS picked
        WHERE l.test_run_id = picked.test_run_id AND l.lane = picked.lane
        RETURNING l.lane, l.share
    """), params).first()
    return None if taken is None else (int(taken[0]), int(taken[1]))


def release_lane(db: Session, run_id: uuid.UUID, owner: str) -> None:
    db.execute(text("""
        UPDATE public.test_run_lane SET owner = NULL, lease_expires_at = NULL, updated_at = now()
        WHERE test_run_id = :run_id AND owner = :owner
    """), {"run_id": run_id, "owner": owner})


def hand_over_lane(db: Session, run_id: uuid.UUID, owner: str, lease_seconds: int) -> str | None:
    """Turn ``owner``'s lease of its lane into a reservation for its successor; returns the successor's token."""
    return db.scalar(text("""
        UPDATE public.test_run_lane SET owner = 'reserved:' || gen_random_uuid(),
               lease_expires_at = now() + make_interval(secs => :lease), updated_at = now()
        WHERE test_run_id = :run_id AND owner = :owner
        RETURNING owner
    """), {"run_id": run_id, "owner": owner, "lease": lease_seconds})


def renew(db: Session, run_id: uuid.UUID, owner: str, lease_seconds: int) -> None:
    """Extend every lease ``owner`` still holds, its tests' and its lane's (a slow call must not be handed to a
    second worker, nor its lane to a second lane task)."""
    db.execute(text("""
        UPDATE public.test_run_item SET lease_expires_at = now() + make_interval(secs => :lease), updated_at = now()
        WHERE test_run_id = :run_id AND state = 'running' AND lease_owner = :owner
    """), {"run_id": run_id, "owner": owner, "lease": lease_seconds})
    db.execute(text("""
        UPDATE public.test_run_lane SET lease_expires_at = now() + make_interval(secs => :lease), updated_at = now()
        WHERE test_run_id = :run_id AND owner = :owner
    """), {"run_id": run_id, "owner": owner, "lease": lease_seconds})
    touch_run(db, run_id)


_INSERT_RESULTS = text("""
    INSERT INTO public.test_result (organization_id, test_run_id, test_id, status, output, reason, error_type,
                                    http_status, latency_ms, attempts, score, metrics, details)
    SELECT i.organization_id, i.test_run_id, r.test_id, r.status, r.output, r.reason, r.error_type, r.http_status,
           r.latency_ms, r.attempts, r.score, r.metrics, r.details
    FROM jsonb_to_recordset(:rows) AS r(test_id uuid, status text, output text, reason text, error_type text,
                                       http_status int, latency_ms float8, attempts int, score float8,
                                       metrics jsonb, details jsonb)
    JOIN public.test_run_item i ON i.test_run_id = :run_id AND i.test_id = r.test_id
    WHERE r.test_id = ANY(:done)
    ON CONFLICT (test_run_id, test_id) DO NOTHING
""").bindparams(bindparam("rows", type_=JSONB), bindparam("done", type_=_UUIDS))


def touch_run(db: Session, run_id: uuid.UUID) -> None:
    """Mark the run alive for the sweeper."""
    db.execute(text("UPDATE public.test_run SET updated_at = now() WHERE id = :run_id"), {"run_id": run_id})


def store_results(db: Session, run_id: uuid.UUID, owner: str | None, results: Sequence[StoredResult], *,
                  touch: bool = True) -> int:
    """Mark the tests done and write their results, for the tests whose lease ``owner`` still holds (any state
    but done when ``owner`` is None: cancellation and the sweeper). Returns how many were stored."""
    if not results:
        return 0
    ids = [result.test_id for result in results]
    owned = "state = 'running' AND lease_owner = :owner" if owner is not None else "state <> 'done'"
    done = db.execute(text(f"""
        UPDATE public.test_run_item SET state = 'done', lease_owner = NULL, lease_expires_at = NULL,
               updated_at = now()
        WHERE test_run_id = :run_id AND test_id = ANY(:ids) AND {owned}
        RETURNING test_id
    """).bindparams(bindparam("ids", type_=_UUIDS)), {"run_id": run_id, "ids": ids, "owner": owner}).scalars().all()
    if not done:
        return 0
    rows = [storable({
        "test_id": str(r.test_id), "status": r.status, "output": r.output, "reason": r.reason,
        "error_type": r.error_type, "http_status": r.http_status, "latency_ms": r.latency_ms,
        "attempts": r.attempts, "score": r.score, "metrics": list(r.metrics), "details": r.details or {},
    }) for r in results]
    db.execute(_INSERT_RESULTS, {"rows": rows, "run_id": run_id, "done": list(done)})
    observe_stored_results(results, done)  # Prometheus counters (docs/observability.md); no-op when metrics are off
    if touch:
        touch_run(db, run_id)
    return len(done)


def release(db: Session, run_id: uuid.UUID, owner: str, started: Iterable[uuid.UUID] = ()) -> None:
    """Give every test ``owner`` still leases back to ``pending`` (a lane that stops with tests leased ahead, or
    early, say on shutdown). A test whose call never ``started`` gets its claim back: leasing ahead must not count
    towards giving up on a test (``MAX_CLAIMS``)."""
    db.execute(text("""
        UPDATE public.test_run_item SET state = 'pending', lease_owner = NULL, lease_expires_at = NULL,
               claims = CASE WHEN test_id = ANY(:started) THEN claims ELSE greatest(claims - 1, 0) END,
               updated_at = now()
        WHERE test_run_id = :run_id AND state = 'running' AND lease_owner = :owner
    """).bindparams(bindparam("started", type_=_UUIDS)), {"run_id": run_id, "owner": owner, "started": list(started)})


def cancel_untouched(db: Session, run_id: uuid.UUID, *, include_expired: bool = True) -> int:
    """Store ``cancelled`` for every test nobody is running (pending, or leased by a worker that is gone)."""
    expired = "OR (state = 'running' AND lease_expires_at <= now())" if include_expired else ""
    ids = db.execute(text(f"""
        SELECT test_id FROM public.test_run_item
        WHERE test_run_id = :run_id AND (state = 'pending' {expired})
        FOR UPDATE SKIP LOCKED
    """), {"run_id": run_id}).scalars().all()
    results = [StoredResult(test_id=test_id, status="cancelled", reason="the run was cancelled before this test ran")
               for test_id in ids]
    return store_results(db, run_id, None, results)


def request_cancel(db: Session, run_id: uuid.UUID) -> str | None:
    """Ask for the run to stop; returns its status (None when this tenant has no such run)."""
    row = db.execute(text("""
        UPDATE public.test_run SET cancel_requested_at = coalesce(cancel_requested_at, now()), updated_at = now()
        WHERE id = :run_id AND status IN ('queued', 'running')
        RETURNING status
    """), {"run_id": run_id}).one_or_none()
    if row is not None:
        return str(row[0])
    return db.scalar(text("SELECT status FROM public.test_run WHERE id = :run_id"), {"run_id": run_id})


def cancel_requested(db: Session, run_id: uuid.UUID) -> bool:
    return bool(db.scalar(text("""
        SELECT cancel_requested_at IS NOT NULL OR status NOT IN ('queued', 'running')
        FROM public.test_run WHERE id = :run_id
    """), {"run_id": run_id}))


def result_counts(db: Session, run_id: uuid.UUID) -> dict[str, int]:
    rows = db.execute(text("SELECT status, count(*) FROM public.test_result WHERE test_run_id = :run_id "
                           "GROUP BY status"), {"run_id": run_id}).all()
    counts = {status: 0 for status in RESULT_STATUSES}
    counts.update({str(status): int(n) for status, n in rows})
    return counts


def final_status(counts: dict[str, int], *, cancelled: bool) -> str:
    """``cancelled`` when asked; ``failed`` when every test errored; ``partial`` when some did; else
    ``completed`` (a run with no tests completes)."""
    if cancelled:
        return "cancelled"
    total = sum(counts.values())
    if total and counts.get("error", 0) == total:
        return "failed"
    if counts.get("error", 0):
        return "partial"
    return "completed"


def finalize(db: Session, run_id: uuid.UUID, *, allow_empty: bool = False) -> str | None:
    """Close the run if no test is left; returns the final status when this call closed it (exactly one caller
    does: the update is conditional on the run still being active). A run without any item is closed only when
    ``allow_empty`` (its execute task seeded it and found no test) or when it is being cancelled: a run the
    producer created whose execute message is still queued has no items yet, and is not finished."""
    state = run_state(db, run_id, lock=True)
    if state is None or state.status not in ACTIVE_RUN_STATUSES:
        return None
    counted = progress(db, run_id)
    if counted.remaining:
        return None
    if counted.done == 0 and not (allow_empty or state.cancel_requested):
        return None
    counts = result_counts(db, run_id)
    status = final_status(counts, cancelled=state.cancel_requested)
    error = None
    if status == "failed":
        error = f"every test ended in error ({counts['error']})"
    db.execute(text("""
        UPDATE public.test_run SET status = :status, counts = :counts, error = :error, finished_at = now(),
               started_at = coalesce(started_at, now()), updated_at = now()
        WHERE id = :run_id AND status IN ('queued', 'running')
    """).bindparams(bindparam("counts", type_=JSONB)),
        {"run_id": run_id, "status": status, "counts": counts, "error": error})
    return status


def fail_run(db: Session, run_id: uuid.UUID, error: str) -> None:
    """A run that cannot execute at all (its configuration is unusable): every untouched test is stored as
    ``error`` with the reason, and the run ends ``failed``."""
    ids = db.execute(text("SELECT test_id FROM public.test_run_item WHERE test_run_id = :run_id AND state <> 'done'"),
                     {"run_id": run_id}).scalars().all()
    store_results(db, run_id, None, [StoredResult(test_id=i, status="error", error_type="invalid_endpoint",
                                                  reason=error) for i in ids])
    counts = result_counts(db, run_id)
    db.execute(text("""
        UPDATE public.test_run SET status = 'failed', counts = :counts, error = :error, finished_at = now(),
               started_at = coalesce(started_at, now()), updated_at = now()
        WHERE id = :run_id AND status IN ('queued', 'running')
    """).bindparams(bindparam("counts", type_=JSONB)), {"run_id": run_id, "counts": counts, "error": error})



@dataclass(frozen=True, slots=True)
class Exchange:
    """What one round trip of a lane gives back: how many results were stored, the tests newly leased, whether
    the run is being cancelled, (when nothing could be leased) how many tests are still claimable, and (when
    asked) how many tests are still pending, counted up to the number asked about."""

    stored: int
    claimed: list[uuid.UUID]
    cancel_requested: bool
    claimable: int
    pending: int | None = None


def exchange(db: Session, run_id: uuid.UUID, owner: str, results: Sequence[StoredResult], want: int, *,
             run_cap: int | None, lease_seconds: int, touch: bool = False, renew_leases: bool = False,
             count_pending_up_to: int = 0) -> Exchange:
    """Store finished results and lease up to ``want`` more tests in one transaction: a lane pays one round trip
    per refill. ``run_cap`` bounds the run's leases (None for a lane, whose share bounds its calls). ``touch``
    marks the run as alive for the sweeper (a lane does it every few seconds, not on every refill);
    ``renew_leases`` extends the owner's leases (every third of a lease)."""
    # A lane's bookkeeping commits without waiting for the WAL flush: the round trip is what a freed slot waits
    # for. If PostgreSQL itself crashes, the last fraction of a second of such commits may be lost together
    # (results and their items' states in one transaction, so never one without the other): those tests run
    # again, which a lost lease costs anyway. Nothing else in the worker is committed this way.
    db.execute(text("SET LOCAL synchronous_commit = off"))
    stored = store_results(db, run_id, owner, results, touch=False)
    if renew_leases:
        renew(db, run_id, owner, lease_seconds)
    elif touch:
        touch_run(db, run_id)
    state = run_state(db, run_id, lock=want > 0)
    cancelled = state is None or state.status not in ACTIVE_RUN_STATUSES or state.cancel_requested
    claimed = [] if cancelled else _claim(db, state, owner, want, run_cap=run_cap, lease_seconds=lease_seconds)
    left = claimable(db, run_id) if want and not claimed and not cancelled else 0
    pending = None
    if claimed and count_pending_up_to > 0:
        # Bounded: the lane only needs to know whether the end of the run is near, not how far it is.
        pending = int(db.scalar(text("""
            SELECT count(*) FROM (SELECT 1 FROM public.test_run_item WHERE test_run_id = :run_id
                                  AND state = 'pending' LIMIT :up_to) AS p
        """), {"run_id": run_id, "up_to": count_pending_up_to}) or 0)
    return Exchange(stored, claimed, cancelled, left, pending)
