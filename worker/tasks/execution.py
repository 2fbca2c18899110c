"""Test execution tasks (docs/execution.md). Names are a wire contract; all of them route to ``execution``.

``execute_test_configuration`` makes (or, redelivered, finds) the run and starts its lanes; each lane is a short
task that runs part of the run and hands over to a successor while work is left; ``cancel_test_run`` stops a run;
``sweep`` settles stalled runs of every organization.

The lane machinery (worker/execution/lane.py, clients.py: aiohttp, jinja2, jsonschema and the judges) is imported
by the process that runs a lane, at its first lane, not by ``import worker.app``: the worker starts sooner, and
producers that import the app never load it (tests/test_worker_start.py). A worker that consumes the ``execution``
queue checks at start that the packages the lanes import are installed, so that a broken image fails at start
rather than at every lane (and the sweeper restarting those lanes forever).
"""

from __future__ import annotations

import importlib.util
import sys
from typing import TYPE_CHECKING, Any

from celery import shared_task
from celery.signals import worker_init

from worker.base_task import BaseTask
from worker.db.models import TestConfiguration
from worker.db.secrets import get_cipher as cipher
from worker.errors import TenantContextError
from worker.execution import loop, store
from worker.execution.cancel import cancel_test_run as cancel_run
from worker.execution.load import load_endpoint, load_metrics
from worker.execution.runs import parse_id, start_run
from worker.execution.settings import ExecutionSettings, execution_settings
from worker.execution.sweeper import sweep as sweep_runs
from worker.tenant.context import current_tenant

if TYPE_CHECKING:
    from worker.execution.lane import LaneReport

LANE_TASK = "rhesis.backend.tasks.execution.run_lane"
#: Third-party packages the lanes import at their first run (see the module docstring).
LANE_PACKAGES = ("aiohttp", "jinja2", "jsonschema")


def missing_lane_packages() -> list[str]:
    """The lanes' packages that cannot be found, without importing any of them."""
    missing = []
    for name in LANE_PACKAGES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


@worker_init.connect(weak=False, dispatch_uid="worker.tasks.execution.lane_packages")
def _refuse_to_start_without_lane_packages(**_: object) -> None:
    from worker.settings import get_settings  # validated by worker.app's own worker_init handler, which runs first

    if "execution" not in get_settings().celery_worker_queues:
        return
    missing = missing_lane_packages()
    if missing:
        # One line and EX_SOFTWARE, like the settings check: the image lacks what the execution queue's tasks need.
        print(f"worker start refused: the execution queue's lanes need {', '.join(missing)}, which cannot be "
              "imported in this environment; install the worker's dependencies (pip install .) or stop consuming "
              "the execution queue (CELERY_WORKER_QUEUES)", file=sys.stderr)
        raise SystemExit(70)


def _tenant() -> Any:
    tenant = current_tenant()
    if not tenant.is_set:
        raise TenantContextError("test execution needs an organization_id header")
    return tenant


def lanes_for(run_cap: int, lane_cap: int, total_tests: int) -> int:
    """Enough lanes to reach the run's cap, never more than there are tests."""
    return max(0, min(store.lane_count(run_cap, lane_cap), total_tests))


def send_lanes(test_run_id: str, successors: list[tuple[int, str]], headers: dict[str, str] | None = None,
               countdown: float = 0) -> None:
    """One lane task per reserved ``(lane, token)``."""
    for lane, token in successors:
        run_lane.apply_async((test_run_id,), {"lane": lane, "token": token}, headers=headers,
                             countdown=countdown or None)


@shared_task(bind=True, base=BaseTask, name="rhesis.backend.tasks.execute_test_configuration")
def execute_test_configuration(self: BaseTask, test_configuration_id: str,
                               test_run_id: str | None = None) -> dict[str, Any]:
    """Start (or, for a redelivered message, continue) the run of ``test_configuration_id``."""
    tenant = _tenant()
    settings = execution_settings()
    with self.get_db_session() as db:
        run = start_run(db, organization_id=tenant.organization_id, user_id=tenant.user_id,
                        test_configuration_id=test_configuration_id, task_id=self.request.id,
                        test_run_id=test_run_id)
        configuration = db.get(TestConfiguration, parse_id(test_configuration_id, "test_configuration_id"))
        run_cap = (configuration.max_concurrency if configuration else None) or settings.run_cap
        status = run.status
        if status in store.ACTIVE_RUN_STATUSES:
            try:
                load_endpoint(db, configuration.endpoint_id, cipher())  # unusable: fail now, not per test
            except Exception as exc:
                store.fail_run(db, run.id, f"the endpoint cannot be used: {exc}"[:500])
                status = "failed"
        if status in store.ACTIVE_RUN_STATUSES and run.total_tests == 0:
            status = store.finalize(db, run.id, allow_empty=True) or status
        lanes = lanes_for(run_cap, settings.lane_cap, run.total_tests) if status in store.ACTIVE_RUN_STATUSES else 0
        # Reserved in the transaction, sent after it: a lane that arrives first finds its reservation. A
        # redelivered message reserves only lanes nobody holds.
        reserved = store.reserve_lanes(db, run.id, store.lane_split(run_cap, settings.lane_cap), lanes,
                                       settings.lease_seconds)
    send_lanes(str(run.id), reserved)
    return {"test_run_id": str(run.id), "status": status, "total_tests": run.total_tests, "lanes": len(reserved),
            "created": run.created}


async def _run_lane(lane_args: dict[str, Any], settings: ExecutionSettings) -> LaneReport:
    from worker.execution.clients import clients
    from worker.execution.lane import Lane

    client, evaluator = await clients(settings)
    return await Lane(client=client, evaluator=evaluator, **lane_args).run()


@shared_task(bind=True, base=BaseTask, name=LANE_TASK)
def run_lane(self: BaseTask, test_run_id: str, lane: int | None = None, token: str | None = None) -> dict[str, Any]:
    from worker.execution.lane import LaneLimits  # heavy: see the module's docstring

    tenant = _tenant()
    settings = execution_settings()
    run_id = parse_id(test_run_id, "test_run_id")
    with self.get_db_session() as db:
        state = store.run_state(db, run_id)
        if state is None or state.status not in store.ACTIVE_RUN_STATUSES:
            return {"test_run_id": test_run_id, "skipped": "no active run"}
        configuration = db.get(TestConfiguration, state.test_configuration_id)
        # An endpoint this worker cannot load (a missing or stale DB_ENCRYPTION_KEY during a rotation, say) is this
        # worker's problem, not the run's: the error goes to Celery's retry, never fails the run or others' leases.
        endpoint = load_endpoint(db, state.endpoint_id, cipher())
        metrics = load_metrics(db, configuration)
    limits = LaneLimits(run_cap=state.max_concurrency or settings.run_cap, lane_cap=settings.lane_cap,
                        lease_seconds=settings.lease_seconds, lane_seconds=settings.lane_seconds,
                        lease_ahead=state.endpoint_max_concurrency is None)

    def hand_over(successors: list[tuple[int, str]], countdown: float) -> None:
        # Called on the process loop, outside this task's context: the tenant headers are explicit. A lane that
        # got nothing (caps full) does not hand over at once: no busy loop of empty tasks.
        send_lanes(test_run_id, successors, tenant.headers(), countdown)

    lane_args: dict[str, Any] = {"tenant": tenant, "run_id": run_id, "endpoint": endpoint, "metrics": metrics,
                                 "limits": limits, "handover": hand_over,
                                 "lane": lane if isinstance(lane, int) else None,
                                 "token": token if isinstance(token, str) else None}
    report = loop.run(_run_lane(lane_args, settings))
    return {"test_run_id": test_run_id, "lane": report.lane, "skipped": report.skipped, "claimed": report.claimed,
            "stored": report.stored, "cancelled": report.cancelled, "handed_over": report.more_work,
            "final_status": report.final_status}


@shared_task(bind=True, base=BaseTask, name="rhesis.backend.tasks.execution.cancel_test_run")
def cancel_test_run(self: BaseTask, test_run_id: str) -> dict[str, Any]:
    """Cancel a run of the message's organization (another organization's run is not found)."""
    _tenant()
    with self.get_db_session() as db:
        outcome = cancel_run(db, parse_id(test_run_id, "test_run_id"))
    return {"test_run_id": test_run_id, "found": outcome.found, "status": outcome.status}


@shared_task(bind=True, base=BaseTask, name="rhesis.backend.tasks.execution.sweep")
def sweep(self: BaseTask) -> dict[str, Any]:
    """For celery beat; needs no tenant (it acts per run in that run's tenant session)."""
    return sweep_runs(self.app, execution_settings().stall_seconds).as_json()
