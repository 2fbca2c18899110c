"""A lane: one short task's share of a run, keeping up to its share of the run's cap in flight on the process loop.

A run's cap is split into lanes (``store.lane_share``); a lane task leases one lane (``test_run_lane``) and keeps at
most that lane's share of calls in flight. It leases tests (``test_run_item``) a little ahead of its calls, calls
the endpoint and the metrics for each, and stores each result with the lease it holds. It stops claiming after
``lane_seconds`` (so other runs' tasks interleave on the queue), checks for cancellation twice a second (in-flight
calls are cancelled at once), renews its leases while calls are slow, and reserves its lane for a successor when
work is left. Database calls run one at a time on a thread of the lane's own, so the loop keeps serving the calls
in flight meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.orm import Session

from worker.db.engine import get_engine
from worker.db.session import tenant_session
from worker.execution import store
from worker.execution.endpoint import EndpointClient
from worker.execution.metrics import Evaluator, test_verdict
from worker.execution.spec import EndpointSpec, EvaluationCase, Invocation, MetricSpec
from worker.tenant.context import Tenant

log = logging.getLogger("worker.execution")
T = TypeVar("T")

CANCEL_POLL_SECONDS = 0.5
IDLE_CLAIM_SECONDS = 0.2
#: How often a busy lane marks its run alive for the sweeper (well under EXECUTION_STALL_SECONDS).
TOUCH_SECONDS = 5.0
#: A lane whose claims found the caps full for this long (other lanes' or other runs' calls) gives its pool slot
#: back; its successor is sent with a delay and polls.
IDLE_EXIT_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class LaneLimits:
    run_cap: int
    lane_cap: int
    lease_seconds: int
    lane_seconds: float
    #: Lease tests beyond the calls in flight; off when the endpoint has a cap of its own (it counts leases).
    lease_ahead: bool = True


@dataclass(frozen=True, slots=True)
class TestRow:
    id: uuid.UUID
    prompt: str
    expected_response: str | None
    expectations: Sequence[Any]


@dataclass(slots=True)
class LaneReport:
    lane: int | None = None
    #: Every lane of the run was held by other lane tasks (or reserved for them): this one did nothing.
    skipped: bool = False
    claimed: int = 0
    stored: int = 0
    cancelled: bool = False
    more_work: bool = False
    final_status: str | None = None


def expectation_metrics(test: TestRow) -> list[MetricSpec]:
    """A test's own checks (``[{"type": "contains", "value": "refund"}]``) as deterministic metrics."""
    metrics = []
    for number, check in enumerate(test.expectations or (), start=1):
        if not isinstance(check, dict):
            continue
        kind = str(check.get("type", "")).replace("-", "_")
        parameters = {key: value for key, value in check.items() if key != "type"}
        # Rhesis-style judge expectations carry their criterion; it is the judge's evaluation prompt.
        prompt = check.get("evaluation_prompt") or check.get("criterion") if kind == "llm_judge" else None
        metrics.append(MetricSpec(id=f"expectation-{number}", name=f"expectation {number}: {kind}", kind=kind,
                                  parameters=parameters, evaluation_prompt=prompt))
    return metrics


_LOAD_TESTS = text("""
    SELECT id, prompt, expected_response, expectations FROM public.test WHERE id = ANY(:ids)
""").bindparams(bindparam("ids", type_=ARRAY(UUID(as_uuid=True))))


def load_tests(db: Session, ids: Sequence[uuid.UUID]) -> list[TestRow]:
    return [TestRow(*row) for row in db.execute(_LOAD_TESTS, {"ids": list(ids)}).all()]


def _score(outcomes: Sequence[dict[str, Any]]) -> float | None:
    scores = [o["score"] for o in outcomes if o.get("status") == "scored" and o.get("score") is not None]
    return sum(scores) / len(scores) if scores else None


class Lane:
    def __init__(self, *, tenant: Tenant, run_id: uuid.UUID, endpoint: EndpointSpec, metrics: Sequence[MetricSpec],
                 client: EndpointClient, evaluator: Evaluator, limits: LaneLimits,
                 handover: Callable[[list[tuple[int, str]], float], None] | None = None,
                 report: LaneReport | None = None, lane: int | None = None, token: str | None = None) -> None:
        self.tenant = tenant
        self.run_id = run_id
        self.endpoint = endpoint
        self.metrics = list(metrics)
        self.client = client
        self.evaluator = evaluator
        self.limits = limits
        #: Sends lane tasks for ``[(lane, reservation token)]`` after a countdown (at the back of the queue);
        #: called at most once.
        self.handover = handover
        #: The lane this task was sent for, and the token its sender reserved it with; None: any free lane.
        self.lane, self.token = lane, token
        #: How this worker would split the cap; used only when the run has no lanes yet (the first split stands).
        self.split = store.lane_split(limits.run_cap, limits.lane_cap)
        #: Fewer pending tests than this: the run's end is near, and tests leased ahead by one lane would wait
        #: for its slots while another lane's are free. 0: not asked (no lease-ahead, or the end is known near).
        self._near_end = 0
        self.owner = f"lane-{uuid.uuid4()}"
        self.report = report if report is not None else LaneReport()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="execution-db")
        self._session: Session | None = None
        self._session_scope: Any = None
        self._connection: Any = None

    async def _db(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``function(session, ...)`` as one transaction on the lane's database thread. The lane keeps one
        tenant session for its life (each transaction re-enters the tenant): no pool checkout and
        session reset per round trip."""
        def call() -> T:
            if self._session is None:
                # Bound to one connection for the lane's life: a Session bound to the engine would hand its
                # connection back to the pool (and reset it) at every commit.
                self._connection = get_engine().connect()
                self._session_scope = tenant_session(self.tenant.organization_id, self.tenant.user_id,
                                                     engine=self._connection)
                self._session = self._session_scope.__enter__()
            try:
                value = function(self._session, *args, **kwargs)
                self._session.commit()
                return value
            except BaseException:
                self._session.rollback()
                raise

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def _close_session(self) -> None:
        scope, connection = self._session_scope, self._connection
        self._session_scope, self._session, self._connection = None, None, None
        try:
            if scope is not None:
                scope.__exit__(None, None, None)
        finally:
            if connection is not None:
                connection.close()

    async def _db_reset(self) -> None:
        """Drop the lane's session and connection after an error; the next round trip opens new ones."""
        def reset() -> None:
            try:
                self._close_session()
            except Exception:
                log.debug("closing a failed session", exc_info=True)

        await asyncio.get_running_loop().run_in_executor(self._executor, reset)

    # -- one test ------------------------------------------------------------------------------------------
    async def _execute(self, test: TestRow) -> store.StoredResult:
        try:
            variables = {"input": test.prompt, "prompt": test.prompt, "expected_response": test.expected_response,
                         "test_id": str(test.id)}
            invocation = await self.client.invoke(self.endpoint, variables)
            if not invocation.ok:
                return self._invocation_error(test, invocation)
            case = EvaluationCase(input=test.prompt, output=invocation.output or "",
                                  expected_response=test.expected_response, context=invocation.context,
                                  latency_ms=invocation.latency_ms)
            outcomes = await self.evaluator.evaluate_all([*self.metrics, *expectation_metrics(test)], case)
            verdict, reason = test_verdict(outcomes)
            as_json = [outcome.as_json() for outcome in outcomes]
            details = {key: value for key, value in (("context", invocation.context),
                                                     ("metadata", invocation.metadata)) if value is not None}
            return store.StoredResult(test_id=test.id, status=verdict, output=invocation.output, reason=reason,
                                      http_status=invocation.http_status, latency_ms=invocation.latency_ms,
                                      attempts=invocation.attempts, score=_score(as_json), metrics=as_json,
                                      details=details)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a defect of ours must cost one test, never the lane or the run
            log.exception("test %s of run %s failed inside the worker", test.id, self.run_id)
            return store.StoredResult(test_id=test.id, status="error", error_type="internal",
                                      reason=f"internal error: {type(exc).__name__}")

    @staticmethod
    def _invocation_error(test: TestRow, invocation: Invocation) -> store.StoredResult:
        return store.StoredResult(test_id=test.id, status="error", error_type=invocation.error_type or "internal",
                                  reason=invocation.error, http_status=invocation.http_status,
                                  latency_ms=invocation.latency_ms, attempts=invocation.attempts)

    # -- the loop ------------------------------------------------------------------------------------------
    async def run(self) -> LaneReport:
        try:
            return await self._run()
        finally:
            try:
                await asyncio.get_running_loop().run_in_executor(self._executor, self._close_session)
            finally:
                self._executor.shutdown(wait=False)

    def _ahead(self, share: int) -> int:
        """Tests leased beyond the calls in flight, so that a call that ends starts the next test at once instead
        of after a database round trip. Not when the endpoint has a cap of its own: that cap counts leases."""
        return max(1, share // 2) if self.limits.lease_ahead else 0

    def _start(self, db: Session) -> tuple[tuple[int, int] | None, store.Exchange | None, list[TestRow]]:
        """Take a lane and lease its first tests, in one transaction."""
        limits = self.limits
        taken = store.take_lane(db, self.run_id, self.owner, self.split, limits.lease_seconds, lane=self.lane,
                                token=self.token)
        if taken is None:
            return None, None, []
        share = taken[1]
        outcome, tests = self._exchange(db, [], share + self._ahead(share), True, False)
        return taken, outcome, tests

    def _exchange(self, db: Session, results: list[store.StoredResult], want: int, touch: bool, renew: bool
                  ) -> tuple[store.Exchange, list[TestRow]]:
        outcome = store.exchange(db, self.run_id, self.owner, results, want, run_cap=None,
                                 lease_seconds=self.limits.lease_seconds, touch=touch, renew_leases=renew,
                                 count_pending_up_to=self._near_end)
        return outcome, load_tests(db, outcome.claimed) if outcome.claimed else []

    async def _retrying(self, function: Callable[..., T], *args: Any) -> T:
        """One transaction on the lane's database thread, retried with backoff on database errors (a failover, a
        reset connection, a deadlock victim): the finished results it carries are never dropped and the calls in
        flight go on meanwhile. Gives up (raises) after about ``lease_seconds`` of failures, when the leases are
        lost anyway. Every transaction a lane retries is idempotent for its owner."""
        delay, waited = 0.2, 0.0
        while True:
            try:
                return await self._db(function, *args)
            except Exception as exc:
                if waited >= self.limits.lease_seconds:
                    raise
                log.warning("run %s: database round trip failed (%s); retrying in %.1f s", self.run_id,
                            type(exc).__name__, delay)
                await self._db_reset()
                await asyncio.sleep(delay)
                waited += delay
                delay = min(delay * 2, 5.0)

    async def _run(self) -> LaneReport:
        """Keep up to the lane's share of the run's cap in flight. Tests are leased a little ahead of the calls,
        so a call that ends starts the next test at once; storing results and leasing more happen in the
        background, one round trip at a time, while the calls go on."""
        limits = self.limits
        started = time.monotonic()
        taken, first, tests = await self._retrying(self._start)
        if taken is None or first is None:
            self.report.skipped = True  # every lane of the run is held: their holders hand over themselves
            return self.report
        lane, share = taken
        self.report.lane = lane
        target = share + self._ahead(share)
        self._near_end = len(self.split) * self._ahead(share)
        waiting: deque[TestRow] = deque(tests)
        self.report.claimed += len(tests)
        in_flight: dict[asyncio.Task[store.StoredResult], uuid.UUID] = {}
        finished: list[store.StoredResult] = []
        trip: asyncio.Task[tuple[store.Exchange, list[TestRow]]] | None = None
        trip_batch: list[store.StoredResult] = []
        trip_wanted = False
        now = time.monotonic()
        last_poll = last_renew = last_touch = now
        exhausted = bool(first.claimed == [] and first.claimable == 0)
        next_claim = now if tests or not first.claimable else now + IDLE_CLAIM_SECONDS
        idle_since: float | None = None
        slice_over = first.cancel_requested
        self.report.cancelled = first.cancel_requested
        # Finished calls and round trips report here: waiting on one event, not on every call in flight (with
        # asyncio.wait, each wake-up would add and remove a callback on each of them).
        completed: deque[asyncio.Task[Any]] = deque()
        wake = asyncio.Event()

        def on_done(task: asyncio.Task[Any]) -> None:
            completed.append(task)
            wake.set()

        try:
            while not self.report.cancelled:
                now = time.monotonic()
                claiming = now - started < limits.lane_seconds and not slice_over
                if claiming:
                    # Calls whose results are not stored yet (in flight, finished, being stored) stay within the
                    # lane's leases: a worker killed now costs at most that many second calls.
                    while waiting and len(in_flight) < share and (
                            len(in_flight) + len(finished) + len(trip_batch) < target):
                        test = waiting.popleft()
                        call = asyncio.create_task(self._execute(test))
                        call.add_done_callback(on_done)
                        in_flight[call] = test.id
                if not in_flight and trip is None and (not claiming or (exhausted and not waiting)):
                    break  # what is finished is stored by the wrap-up, in its own transaction
                if trip is None:
                    want = target - len(in_flight) - len(waiting) if claiming and now >= next_claim else 0
                    renew = now - last_renew >= limits.lease_seconds / 3
                    touch = now - last_touch >= TOUCH_SECONDS
                    if finished or want > 0 or renew or now - last_poll >= CANCEL_POLL_SECONDS:
                        trip_batch, finished = finished, []
                        trip_wanted = want > 0
                        trip = asyncio.create_task(self._retrying(self._exchange, trip_batch, max(0, want), touch,
                                                                  renew))
                        trip.add_done_callback(on_done)
                        last_renew = now if renew else last_renew
                        last_touch = now if touch or renew else last_touch
                if claiming and not in_flight and not waiting:
                    idle_since = idle_since or now
                    if now - idle_since >= IDLE_EXIT_SECONDS:
                        slice_over = True  # caps full for a while: give the pool slot back, a successor polls
                else:
                    idle_since = None
                if not in_flight and trip is None:
                    await asyncio.sleep(max(0.0, min(next_claim, last_poll + CANCEL_POLL_SECONDS) - now))
                    continue
                if not completed:
                    wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(CANCEL_POLL_SECONDS):
                            await wake.wait()
                while completed:
                    task = completed.popleft()
                    if task is trip:
                        trip = None
                        outcome, claimed = task.result()  # raises when the database stayed away too long
                        trip_batch = []
                        last_poll = time.monotonic()
                        self.report.stored += outcome.stored
                        if outcome.cancel_requested:
                            self.report.cancelled = True
                            continue
                        self.report.claimed += len(claimed)
                        waiting.extend(claimed)
                        if outcome.pending is not None and outcome.pending < self._near_end:
                            target, self._near_end = share, 0  # near the end: lease only for free slots
                        if claimed:
                            exhausted = False
                        elif trip_wanted:
                            exhausted = outcome.claimable == 0
                            next_claim = last_poll + IDLE_CLAIM_SECONDS  # caps full, or nothing left
                    elif task in in_flight:
                        finished.append(task.result())
                        in_flight.pop(task)
            if self.report.cancelled:
                finished.extend(await self._cancel_in_flight(in_flight))
                finished.extend(store.StoredResult(test_id=test.id, status="cancelled",
                                                   reason="the run was cancelled before this test ran")
                                for test in waiting)
                waiting.clear()
        except BaseException:
            # Interrupted (shutdown, time limit, a database that stays down): stop the calls and hand the
            # unfinished tests back.
            started_ids = list(in_flight.values())
            for task in in_flight:
                task.cancel()
            if trip is not None:
                trip.cancel()
            await asyncio.gather(*in_flight, *([trip] if trip is not None else []), return_exceptions=True)
            await asyncio.shield(self._settle([*trip_batch, *finished], started_ids))
            raise
        await self._wrap_up(finished, lane)
        return self.report

    async def _cancel_in_flight(self, in_flight: dict[asyncio.Task[store.StoredResult], uuid.UUID]
                                ) -> list[store.StoredResult]:
        for task in in_flight:
            task.cancel()
        results = []
        outcomes = await asyncio.gather(*in_flight, return_exceptions=True)
        for test_id, outcome in zip(in_flight.values(), outcomes, strict=True):
            if isinstance(outcome, store.StoredResult):
                results.append(outcome)  # it finished before the cancel reached it: keep it
            else:
                results.append(store.StoredResult(test_id=test_id, status="cancelled",
                                                  reason="the run was cancelled while this test was running"))
        in_flight.clear()
        return results

    async def _settle(self, finished: list[store.StoredResult], started: list[uuid.UUID]) -> None:
        def settle(db: Session) -> None:
            self.report.stored += store.store_results(db, self.run_id, self.owner, finished)
            store.release(db, self.run_id, self.owner, started)
            store.release_lane(db, self.run_id, self.owner)

        try:
            await self._db(settle)
        except Exception:
            log.warning("run %s: could not hand back its tests; their leases expire instead", self.run_id,
                        exc_info=True)

    async def _wrap_up(self, finished: list[store.StoredResult], lane: int) -> None:
        """Store what is left, give back the tests leased ahead, and either close the run, or reserve this lane
        (and any other free one) for successors when tests are left to claim, or let the lane go."""
        limits = self.limits

        def wrap_up(db: Session) -> tuple[list[tuple[int, str]], str | None]:
            self.report.stored += store.store_results(db, self.run_id, self.owner, finished)
            store.release(db, self.run_id, self.owner)
            if self.report.cancelled:
                store.cancel_untouched(db, self.run_id, include_expired=True)
            if store.progress(db, self.run_id).remaining == 0:
                store.release_lane(db, self.run_id, self.owner)
                return [], store.finalize(db, self.run_id)
            state = store.run_state(db, self.run_id)
            if (self.report.cancelled or state is None or state.status not in store.ACTIVE_RUN_STATUSES
                    or state.cancel_requested or store.claimable(db, self.run_id) == 0):
                # Tests still leased belong to live lanes, which hand over themselves; the sweeper covers them.
                store.release_lane(db, self.run_id, self.owner)
                return [], None
            token = store.hand_over_lane(db, self.run_id, self.owner, limits.lease_seconds)
            successors = [(lane, token)] if token else []
            # Lanes let go earlier (nothing was claimable then) or whose holder died take part again.
            others = store.reserve_lanes(db, self.run_id, self.split, None, limits.lease_seconds)
            return successors + others, None

        successors, self.report.final_status = await self._retrying(wrap_up)
        if successors and self.handover is not None:
            # Outside the transaction: a broker error here must not undo stored results. A reservation whose
            # message was not sent expires like a lease; the other lanes or the sweeper take the lane then.
            try:
                self.handover(successors, 0.0 if self.report.claimed else 1.0)
                self.report.more_work = True
            except Exception:
                log.warning("run %s: could not send the next lanes; the sweeper will", self.run_id, exc_info=True)
