"""A lane: one short task's share of a run, keeping up to ``lane_cap`` tests in flight on the process loop.

It claims tests in batches (leases in ``test_run_item``), calls the endpoint and the metrics for each, and stores
each result with the lease it holds. It stops claiming after ``lane_seconds`` (so other runs' tasks interleave on
the queue), checks for cancellation twice a second (in-flight calls are cancelled at once), renews its leases
while calls are slow, and reports whether work is left for a successor. Database calls run one at a time on a
thread of the lane's own, so the loop keeps serving the calls in flight meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
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


@dataclass(frozen=True, slots=True)
class TestRow:
    id: uuid.UUID
    prompt: str
    expected_response: str | None
    expectations: Sequence[Any]


@dataclass(slots=True)
class LaneReport:
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
                 handover: Callable[[], None] | None = None, report: LaneReport | None = None) -> None:
        self.tenant = tenant
        self.run_id = run_id
        self.endpoint = endpoint
        self.metrics = list(metrics)
        self.client = client
        self.evaluator = evaluator
        self.limits = limits
        #: Sends this lane's successor (a task at the back of the queue); called at most once.
        self.handover = handover
        self.owner = f"lane-{uuid.uuid4()}"
        self.report = report if report is not None else LaneReport()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="execution-db")
        self._session: Session | None = None
        self._session_scope: Any = None
        self._connection: Any = None

    async def _db(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``function(session, ...)`` as one transaction on the lane's database thread. The lane keeps one
        tenant session for its life (each transaction re-enters the tenant): no pool checkout, pre-ping and
        reset per round trip."""
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

    def _exchange(self, db: Session, results: list[store.StoredResult], want: int, touch: bool
                  ) -> tuple[store.Exchange, list[TestRow]]:
        outcome = store.exchange(db, self.run_id, self.owner, results, want, run_cap=self.limits.run_cap,
                                 lease_seconds=self.limits.lease_seconds, touch=touch)
        return outcome, load_tests(db, outcome.claimed) if outcome.claimed else []

    async def _round_trip(self, batch: list[store.StoredResult], want: int, touch: bool
                          ) -> tuple[store.Exchange, list[TestRow]]:
        """One exchange, retried with backoff on database errors (a failover, a reset connection, a deadlock
        victim): the finished results of ``batch`` are never dropped and the calls in flight go on meanwhile.
        Gives up (raises) after about ``lease_seconds`` of failures, when the leases are lost anyway."""
        delay, waited = 0.2, 0.0
        while True:
            try:
                return await self._db(self._exchange, batch, want, touch)
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
        """Refill as calls finish: each round trip stores what finished and leases as many tests as there are
        free slots, so the run's leases track its calls in flight closely and the cap is used, not wasted on
        results waiting to be written."""
        limits = self.limits
        started = time.monotonic()
        in_flight: dict[asyncio.Task[store.StoredResult], uuid.UUID] = {}
        finished: list[store.StoredResult] = []
        last_poll = last_renew = started
        last_touch = started - TOUCH_SECONDS
        next_claim = started
        idle_since: float | None = None
        slice_over = False
        try:
            while True:
                now = time.monotonic()
                claiming = now - started < limits.lane_seconds and not slice_over
                want = limits.lane_cap - len(in_flight) if claiming and now >= next_claim else 0
                if finished or want or now - last_poll >= CANCEL_POLL_SECONDS:
                    batch, finished = finished, []
                    touch = now - last_touch >= TOUCH_SECONDS
                    try:
                        outcome, tests = await self._round_trip(batch, want, touch)
                    except BaseException:
                        finished = batch + finished  # still ours to store (see _settle)
                        raise
                    last_touch = now if touch else last_touch
                    last_poll = time.monotonic()
                    self.report.stored += outcome.stored
                    if outcome.cancel_requested:
                        self.report.cancelled = True
                        finished.extend(await self._cancel_in_flight(in_flight))
                        break
                    self.report.claimed += len(tests)
                    for test in tests:
                        in_flight[asyncio.create_task(self._execute(test))] = test.id
                    if want and not tests:
                        if not outcome.claimable and not in_flight:
                            break  # nothing left that this lane could take
                        next_claim = time.monotonic() + IDLE_CLAIM_SECONDS  # caps full: others' calls in flight
                if claiming and not in_flight:
                    idle_since = idle_since or now
                    if now - idle_since >= IDLE_EXIT_SECONDS:
                        slice_over = True  # caps full for a while: give the pool slot back, a successor polls
                else:
                    idle_since = None
                if not claiming:
                    slice_over = True
                if not in_flight:
                    if slice_over:
                        break
                    await asyncio.sleep(max(0.0, min(next_claim, last_poll + CANCEL_POLL_SECONDS)
                                            - time.monotonic()))
                    continue
                done, _ = await asyncio.wait(in_flight, timeout=CANCEL_POLL_SECONDS,
                                             return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    in_flight.pop(task)
                    finished.append(task.result())
                if in_flight and time.monotonic() - last_renew >= limits.lease_seconds / 3:
                    try:
                        await self._db(store.renew, self.run_id, self.owner, list(in_flight.values()),
                                       limits.lease_seconds)
                    except Exception:
                        log.warning("run %s: renewing leases failed; trying again", self.run_id, exc_info=True)
                        await self._db_reset()
                    last_renew = time.monotonic()
        except BaseException:
            # Interrupted (shutdown, time limit, a database that stays down): stop the calls and hand the
            # unfinished tests back.
            ids = list(in_flight.values())
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)
            await asyncio.shield(self._settle(finished, ids))
            raise
        await self._flush(finished)
        await self._wrap_up()
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

    async def _settle(self, finished: list[store.StoredResult], unfinished: list[uuid.UUID]) -> None:
        try:
            await self._flush(finished)
            await self._db(store.release, self.run_id, self.owner, unfinished)
        except Exception:
            log.warning("run %s: could not hand back %d tests; their leases expire instead", self.run_id,
                        len(unfinished), exc_info=True)

    async def _flush(self, finished: list[store.StoredResult]) -> None:
        if finished:
            batch = list(finished)
            finished.clear()
            self.report.stored += await self._db(store.store_results, self.run_id, self.owner, batch)

    async def _wrap_up(self) -> None:
        def wrap_up(db: Session) -> tuple[bool, str | None]:
            if self.report.cancelled:
                store.cancel_untouched(db, self.run_id, include_expired=True)
            remaining = store.progress(db, self.run_id)
            if remaining.remaining == 0:
                return False, store.finalize(db, self.run_id)
            if self.report.cancelled:
                return False, None
            return store.needs_lane(db, self.run_id, self.limits.run_cap), None

        more_work, self.report.final_status = await self._db(wrap_up)
        if more_work and self.handover is not None:
            # Outside the transaction: a broker error here must not undo stored results; the sweeper covers it.
            try:
                self.handover()
                self.report.more_work = True
            except Exception:
                log.warning("run %s: could not send the next lane; the sweeper will", self.run_id, exc_info=True)
