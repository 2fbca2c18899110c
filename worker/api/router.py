"""The task and run API as a FastAPI router that a host backend mounts with its own current-user dependency.

Every read and write goes through a tenant session of the caller's organization, so PostgreSQL row-level security
decides what exists: another organization's configuration, run, result or task is "not found", exactly like an id
nobody has (the same 404 body), and ids cannot be probed.

Who owns a task: the execute route creates the run before it publishes the task, with the task id it will publish
under (``test_run.task_id``, unique per organization). That column is the ownership record of the task, written in
the same INSERT that creates the run: no extra row, no extra Redis round trip. ``GET /tasks/{task_id}`` answers
only for task ids a run of the caller's organization carries (also while the task is pending and after its result
expired); any other task id is not found.
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations, and the current-user dependency
# is a local of create_router that string annotations could not reach.
import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, get_args

from fastapi import APIRouter, Depends, Path, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from worker.api.errors import ApiError, ErrorResponse, ErrorShapedRoute, log, not_found
from worker.api.models import Launched, ResultPage, ResultStatus, Run, RunResult, TaskState, TaskStatus
from worker.db.models import TEST_RESULT_STATUSES, Test, TestConfiguration, TestResult, TestRun, User
from worker.db.session import tenant_session
from worker.errors import PermanentTaskError
from worker.execution import store
from worker.execution.cancel import cancel_test_run
from worker.launcher import task_launcher

EXECUTE_TASK = "rhesis.backend.tasks.execute_test_configuration"
FINAL_STATUSES = ("completed", "partial", "failed", "cancelled")
# Celery task ids of this product are UUIDs; anything outside this set is not a task id of ours (and NUL or
# other bytes PostgreSQL refuses never reach a query).
_TASK_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,255}")
_MAX_OFFSET = 10_000_000
_TASK_FAILED = "the task failed; the worker's log has the details (search for the task id)"

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Not authenticated (the host's authentication decides)."},
    403: {"model": ErrorResponse, "description": "The current user has no usable organization."},
    404: {"model": ErrorResponse, "description": "Unknown id, or another organization's (the same answer)."},
    422: {"model": ErrorResponse, "description": "A query parameter is invalid."},
    503: {"model": ErrorResponse, "description": "The database or the task queue is unavailable."},
}

# One server-sent event, as OpenAPI 3.2 describes the items of a text/event-stream (`itemSchema`; `schema` is the
# whole stream, a sequence of them): `data` is the run as JSON.
_EVENT: dict[str, Any] = {
    "type": "object", "required": ["data"],
    "properties": {
        "event": {"type": "string", "enum": ["progress", "end", "error"]},
        "id": {"type": "string", "description": "1, 2, 3, ... within one stream."},
        "data": {"type": "string", "contentMediaType": "application/json",
                 "contentSchema": {"$ref": "#/components/schemas/Run"},
                 "description": "The run, as GET /test_runs/{id} answers it (an ErrorResponse for `error`)."},
        "retry": {"type": "integer", "minimum": 0},
    },
}

_EVENT_STREAM = {"itemSchema": _EVENT, "schema": {"type": "array", "items": _EVENT}}

RunId = Annotated[str, Path(description="Id of a test run of the caller's organization.")]


def _parse(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise not_found() from None


def run_view(db: Session, run: TestRun, now: datetime | None = None) -> Run:
    """What a caller sees of a run: live counts while it is active (the stored ones once it has ended)."""
    active = run.status in store.ACTIVE_RUN_STATUSES
    counts = store.result_counts(db, run.id) if active else {**dict.fromkeys(TEST_RESULT_STATUSES, 0),
                                                             **(run.counts or {})}
    done = sum(int(n) for n in counts.values())
    total = run.total_tests or 0
    progress = 1.0 if not active else (min(done / total, 1.0) if total else 0.0)
    end = run.finished_at or (now or datetime.now(UTC))
    duration = (end - run.started_at).total_seconds() if run.started_at else None
    return Run(id=run.id, test_configuration_id=run.test_configuration_id, status=run.status, task_id=run.task_id,
               total_tests=total, done=done, progress=round(progress, 4), counts=counts,
               cancel_requested=run.cancel_requested_at is not None, error=run.error, created_at=run.created_at,
               started_at=run.started_at, finished_at=run.finished_at,
               duration_seconds=None if duration is None else round(max(duration, 0.0), 3))


def task_error(value: object) -> str:
    """A failed task's exception as the caller may see it: the type, and the message only for the product's own
    permanent errors (written for users: ids and reasons, no secrets). Anything else may quote a driver, a URL or
    an endpoint's answer, so it is named, not shown."""
    if not isinstance(value, BaseException):
        return _TASK_FAILED
    name = type(value).__name__
    if isinstance(value, PermanentTaskError):
        from config import mask_url

        text = " ".join(str(value).split())
        return f"{name}: {' '.join(mask_url(word) if '://' in word else word for word in text.split(' '))}"[:500]
    if name == "TaskRevokedError":
        return "TaskRevokedError: the task was revoked"
    return f"{name}: {_TASK_FAILED}"


def task_state(task_id: str, meta: dict[str, Any]) -> TaskState:
    status = str(meta.get("status") or "PENDING")
    value = meta.get("result")
    if status == "SUCCESS":
        return TaskState(task_id=task_id, status=status, result=value)
    if status in ("FAILURE", "RETRY", "REVOKED", "REJECTED"):
        return TaskState(task_id=task_id, status=status, error=task_error(value))
    # STARTED carries the worker's host name and pid: not the caller's business.
    return TaskState(task_id=task_id, status=status if status in get_args(TaskStatus) else "PENDING")


def create_router(current_user: Callable[..., Any], *, celery_app: Any = None, engine: Engine | None = None,
                  events_interval: float = 1.0, keepalive_seconds: float = 15.0, **router_options: Any) -> APIRouter:
    """The routes, for ``app.include_router(create_router(get_current_user), prefix=...)``.

    ``current_user`` is the host's FastAPI dependency; it returns any object with ``id`` and ``organization_id``
    (UUIDs), and authenticates by itself: the router never does. ``celery_app`` defaults to ``worker.app.app``,
    ``engine`` to ``DATABASE_URL``'s. ``events_interval`` is how often the event stream reads the run;
    ``keepalive_seconds`` how long it stays silent at most (a comment line keeps proxies from closing it).
    ``router_options`` go to :class:`fastapi.APIRouter` (``tags``, ``dependencies``, ...).
    """
    router_options.setdefault("tags", ["test execution"])
    router = APIRouter(route_class=ErrorShapedRoute, **router_options)
    CurrentUser = Annotated[Any, Depends(current_user)]

    def celery() -> Any:
        if celery_app is not None:
            return celery_app
        from worker.app import app

        return app

    def session(user: Any) -> Any:
        return tenant_session(user.organization_id, getattr(user, "id", None), engine=engine)

    def read_run(user: Any, run_id: uuid.UUID) -> Run | None:
        with session(user) as db:
            run = db.get(TestRun, run_id)
            return None if run is None else run_view(db, run)

    @router.post("/test_configurations/{test_configuration_id}/execute", status_code=202, response_model=Launched,
                 responses=_ERRORS, summary="Execute a test configuration")
    def execute(test_configuration_id: Annotated[str, Path(description="Id of a test configuration of the "
                                                                         "caller's organization.")],
                user: CurrentUser) -> Launched:
        """Create a run (``queued``) and enqueue ``execute_test_configuration`` for it as the current user.

        Nothing is enqueued for an unknown or foreign configuration (404)."""
        configuration_id = _parse(test_configuration_id)
        task_id = str(uuid.uuid4())
        with session(user) as db:
            if db.get(TestConfiguration, configuration_id) is None:
                raise not_found()
            # The host's user may be unknown to this database; the run then names no user (the foreign key).
            user_id = getattr(user, "id", None)
            known = user_id is not None and db.get(User, uuid.UUID(str(user_id))) is not None
            run = TestRun(test_configuration_id=configuration_id, status="queued", task_id=task_id,
                          user_id=uuid.UUID(str(user_id)) if known else None)
            db.add(run)
        app = celery()
        try:
            task_launcher(app.tasks[EXECUTE_TASK], str(configuration_id), current_user=user,
                          test_run_id=str(run.id), launch_options={"task_id": task_id})
        except Exception:
            log.exception("API: could not enqueue the run %s", run.id)
            with session(user) as db:
                store.fail_run(db, run.id, "the execute task could not be enqueued")
            raise ApiError(503, "unavailable", "the task queue is unavailable; try again later",
                           {"Retry-After": "5"}) from None
        return Launched(task_id=task_id, test_run_id=run.id)

    @router.get("/tasks/{task_id}", response_model=TaskState, responses=_ERRORS, summary="State of a task")
    def get_task(task_id: Annotated[str, Path(description="Task id returned by the execute route.")],
                 user: CurrentUser) -> TaskState:
        """Celery's state of an execute task of the caller's organization (its run is the ownership record)."""
        if not _TASK_ID.fullmatch(task_id):
            raise not_found()
        with session(user) as db:
            owned = db.scalar(select(TestRun.id).where(TestRun.task_id == task_id).limit(1))
        if owned is None:
            raise not_found()
        return task_state(task_id, celery().backend.get_task_meta(task_id))

    @router.get("/test_runs/{test_run_id}", response_model=Run, responses=_ERRORS, summary="A test run")
    def get_run(test_run_id: RunId, user: CurrentUser) -> Run:
        """Status, counts by result status, progress and timings."""
        view = read_run(user, _parse(test_run_id))
        if view is None:
            raise not_found()
        return view

    @router.get("/test_runs/{test_run_id}/results", response_model=ResultPage, responses=_ERRORS,
                summary="Results of a test run, paged")
    def list_results(test_run_id: RunId, user: CurrentUser,
                     limit: Annotated[int, Query(ge=1, le=500, description="Page size.")] = 50,
                     offset: Annotated[int, Query(ge=0, le=_MAX_OFFSET, description="Results to skip.")] = 0,
                     status: Annotated[ResultStatus | None, Query(description="Only results with this status.")]
                     = None) -> ResultPage:
        """Stored results in the order they were stored (then by id), with the test's prompt."""
        run_id = _parse(test_run_id)
        with session(user) as db:
            if db.get(TestRun, run_id) is None:
                raise not_found()
            where = [TestResult.test_run_id == run_id] + ([TestResult.status == status] if status else [])
            total = db.scalar(select(func.count()).select_from(TestResult).where(*where)) or 0
            rows = db.execute(select(TestResult, Test.prompt).join(Test, Test.id == TestResult.test_id).where(*where)
                              .order_by(TestResult.created_at, TestResult.id).limit(limit).offset(offset)).all()
        items = [RunResult(id=r.id, test_id=r.test_id, prompt=prompt, status=r.status, output=r.output, score=r.score,
                           reason=r.reason, error_type=r.error_type, http_status=r.http_status,
                           latency_ms=r.latency_ms, attempts=r.attempts, metrics=list(r.metrics or []),
                           details=dict(r.details or {}), created_at=r.created_at) for r, prompt in rows]
        next_offset = offset + len(items) if offset + len(items) < total else None
        return ResultPage(items=items, total=total, limit=limit, offset=offset, next_offset=next_offset)

    @router.post("/test_runs/{test_run_id}/cancel", response_model=Run, responses=_ERRORS, summary="Cancel a run")
    def cancel(test_run_id: RunId, user: CurrentUser) -> Run:
        """Ask the run to stop: nothing new starts, calls in flight are cancelled, finished results stay.

        Idempotent; a run that has ended is left as it is. The answer is the run after the request: ``cancelled``
        at once when no worker holds a test, else still ``running`` with ``cancel_requested`` until its lanes stop.
        """
        run_id = _parse(test_run_id)
        with session(user) as db:
            if not cancel_test_run(db, run_id).found:
                raise not_found()
            run = db.execute(select(TestRun).where(TestRun.id == run_id)
                             .execution_options(populate_existing=True)).scalar_one()
            return run_view(db, run)

    @router.get("/test_runs/{test_run_id}/events", response_class=StreamingResponse, summary="Follow a run (SSE)",
                responses={**_ERRORS, 200: {"description": (
                    "A text/event-stream: `event: progress` with the run (the body of GET /test_runs/{id}) whenever "
                    "it changes, then one `event: end` with the final run, after which the stream closes. Comment "
                    "lines keep an idle stream open."),
                    "content": {"text/event-stream": _EVENT_STREAM}}})
    async def events(test_run_id: RunId, user: CurrentUser) -> StreamingResponse:
        """Server-sent events with the run's progress until it ends."""
        run_id = _parse(test_run_id)
        first = await run_in_threadpool(read_run, user, run_id)
        if first is None:
            raise not_found()
        return StreamingResponse(_stream(user, run_id, first), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _stream(user: Any, run_id: uuid.UUID, view: Run | None) -> AsyncIterator[str]:
        yield f"retry: {int(max(events_interval, 1.0) * 2000)}\n\n"
        sequence, last, quiet = 0, None, 0.0
        while True:
            if view is None:  # deleted while followed
                yield 'event: error\ndata: {"error": {"code": "not_found", "message": "not found"}}\n\n'
                return
            final = view.status in FINAL_STATUSES
            # The duration ticks on every read: a change is anything but that.
            key = view.model_dump_json(exclude={"duration_seconds"})
            if key != last or final:
                sequence += 1
                last, quiet = key, 0.0
                payload = view.model_dump_json(by_alias=True)  # "pass", as GET /test_runs/{id} writes it
                yield f"id: {sequence}\nevent: {'end' if final else 'progress'}\ndata: {payload}\n\n"
            if final:
                return
            await asyncio.sleep(events_interval)
            quiet += events_interval
            if quiet >= keepalive_seconds:
                quiet = 0.0
                yield ": keep-alive\n\n"
            view = await run_in_threadpool(read_run, user, run_id)

    return router
