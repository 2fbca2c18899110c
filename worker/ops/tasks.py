"""Tasks as the workers and the result backend see them: ``inspect``, ``stuck``, ``revoke``.

Workers are asked with a broadcast (``tenant_tasks``, worker/ops/control.py) and a short timeout: a worker that
does not answer in time is reported as not answering, never waited for.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from celery import states

from worker.ops.broker import CHORD_UNLOCK, broker_view, known_queues, waiting_messages

CANNOT_TERMINATE = ("threads", "gevent", "eventlet")


def worker_tasks(app: Any, timeout: float = 1.0) -> dict[str, dict[str, Any]]:
    """``{node: {"pool", "active", "reserved", "scheduled"}}`` of every worker that answered."""
    replies = app.control.broadcast("tenant_tasks", reply=True, timeout=timeout) or []
    return {node: answer for reply in replies for node, answer in reply.items() if isinstance(answer, dict)}


def inspect_lines(tasks: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    for node in sorted(tasks):
        answer = tasks[node]
        lines.append(f"worker={node} pool={answer.get('pool')} active={len(answer.get('active', []))} "
                     f"reserved={len(answer.get('reserved', []))} scheduled={len(answer.get('scheduled', []))}")
        for kind in ("active", "reserved", "scheduled"):
            for task in answer.get(kind, []):
                extra = ""
                if kind == "active" and task.get("time_start"):
                    extra = f" running={time.time() - float(task['time_start']):.0f}s"
                elif kind == "scheduled":
                    extra = f" eta={task.get('eta')}"
                lines.append(f"  {kind} id={task['id']} name={task['name']} "
                             f"organization_id={task.get('organization_id')} user_id={task.get('user_id')}{extra}")
    return lines


# -- stuck ---------------------------------------------------------------------------------------------------

@dataclass
class StuckReport:
    threshold: int
    tasks: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, str | None]] = field(default_factory=list)
    chord_unlocks: list[dict[str, Any]] = field(default_factory=list)
    native_chords: bool = True
    answering: list[str] = field(default_factory=list)

    @property
    def found(self) -> int:
        return len(self.tasks) + len(self.runs) + len(self.chord_unlocks)

    def lines(self, stall_seconds: int) -> list[str]:
        out = [f"started_tasks older_than={self.threshold}s count={len(self.tasks)}"]
        out += [f"  task id={t['id']} name={t['name']} started={_seconds(t['age'])} worker={t['worker']} "
                f"worker_running_it={'yes' if t['live'] else 'no'}" for t in self.tasks]
        out.append(f"stalled_runs stall_seconds={stall_seconds} count={len(self.runs)}")
        out += [f"  run id={r['run_id']} organization_id={r['organization_id']} user_id={r['user_id']}"
                for r in self.runs]
        backend = "native (the Redis result backend joins chords itself)" if self.native_chords else "polling"
        out.append(f"chord_unlock pending={len(self.chord_unlocks)} chord_join={backend}")
        out += [f"  chord_unlock id={c['id']} where={c['where']} retries={c['retries']}" for c in self.chord_unlocks]
        return out

    def as_json(self) -> dict[str, Any]:
        return {"threshold_seconds": self.threshold, "started_tasks": self.tasks, "stalled_runs": self.runs,
                "chord_unlock": self.chord_unlocks, "native_chord_join": self.native_chords,
                "workers_answering": self.answering}


def _seconds(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.0f}s"


def started_tasks(app: Any, threshold: int, live: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Tasks whose last state in the result backend is STARTED and that started more than ``threshold`` s ago.

    The STARTED record holds no start time, but Celery writes it with an expiry of ``result_expires``: its age is
    ``result_expires`` minus the key's remaining time to live. A worker that answers and runs the task gives the
    exact start instead.
    """
    running = {task["id"]: (node, task) for node, answer in live.items() for task in answer.get("active", [])}
    backend = app.backend
    client = backend.client
    prefix = backend.task_keyprefix
    prefix = prefix.decode() if isinstance(prefix, bytes) else prefix
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    found = []
    for start in range(0, len(keys), 500):
        batch = keys[start:start + 500]
        for key, raw in zip(batch, client.mget(batch), strict=True):
            if raw is None:
                continue
            meta = backend.decode_result(raw)
            if meta.get("status") != states.STARTED:
                continue
            task_id = meta.get("task_id") or key.decode()[len(prefix):]
            age: float | None = None
            live_here = running.get(task_id)
            if live_here and live_here[1].get("time_start"):
                age = time.time() - float(live_here[1]["time_start"])
            elif backend.expires:
                ttl = client.ttl(key)
                age = float(backend.expires - ttl) if ttl and ttl > 0 else None
            if age is not None and age < threshold:
                continue
            result = meta.get("result") if isinstance(meta.get("result"), dict) else {}
            found.append({"id": task_id, "name": meta.get("name"), "age": age,
                          "worker": meta.get("worker") or result.get("hostname"), "live": live_here is not None})
    return sorted(found, key=lambda t: t["id"])


def pending_chord_unlocks(app: Any, configured: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    with broker_view(app) as view:
        found = []
        for where, envelope in waiting_messages(view, known_queues(view, configured)):
            headers = envelope.get("headers") or {}
            if isinstance(headers, dict) and headers.get("task") == CHORD_UNLOCK:
                found.append({"id": headers.get("id"), "where": where, "retries": headers.get("retries", 0)})
        return found


def find_stuck(app: Any, threshold: int, stall_seconds: int, configured: tuple[str, ...] = (),
               timeout: float = 1.0) -> StuckReport:
    from worker.execution.sweeper import stalled_runs

    live = worker_tasks(app, timeout)
    report = StuckReport(threshold, native_chords=bool(getattr(app.backend, "supports_native_join", False)),
                         answering=sorted(live))
    report.tasks = started_tasks(app, threshold, live)
    report.runs = [{"organization_id": str(org), "user_id": None if user is None else str(user),
                    "run_id": str(run)} for org, user, run in stalled_runs(stall_seconds)]
    report.chord_unlocks = pending_chord_unlocks(app, configured)
    return report


def fix_stuck(app: Any, report: StuckReport, stall_seconds: int) -> list[str]:
    """Revoke the stuck tasks (and mark those no worker runs REVOKED, so waiting callers stop waiting), revoke
    pending chord_unlock polls, settle stalled runs with the sweeper. One line per action."""
    from worker.execution.sweeper import sweep

    done = []
    for task in report.tasks:
        app.control.revoke(task["id"], terminate=task["live"])
        if not task["live"]:
            app.backend.mark_as_revoked(task["id"], reason="stuck: STARTED with no worker running it")
        done.append(f"fixed task id={task['id']} revoked{' terminated' if task['live'] else ' marked REVOKED'}")
    for unlock in report.chord_unlocks:
        if unlock["id"]:
            app.control.revoke(unlock["id"])
            done.append(f"fixed chord_unlock id={unlock['id']} revoked")
    if report.runs:
        swept = sweep(app, stall_seconds)
        for run_id, status in sorted(swept.closed.items()):
            done.append(f"fixed run id={run_id} closed status={status}")
        done += [f"fixed run id={run_id} requeued" for run_id in swept.requeued]
    return done


# -- revoke ----------------------------------------------------------------------------------------------------

def revoke(app: Any, task_id: str, terminate: bool, timeout: float = 1.0) -> tuple[list[str], bool]:
    """Revoke ``task_id``; lines for the operator, and whether a running copy could not be terminated."""
    uuid.UUID(task_id)  # a typo must not be broadcast as a revocation that matches nothing
    live = worker_tasks(app, timeout)
    running_on = {node: answer.get("pool") for node, answer in live.items()
                  if any(t["id"] == task_id for t in answer.get("active", []))}
    lines, unkillable = [], False
    # The threads pool answers a terminate with an error and Celery then records REVOKED for a task that goes on
    # running: ask for termination only where a pool can do it.
    can_terminate = not running_on or any(pool not in CANNOT_TERMINATE for pool in running_on.values())
    app.control.revoke(task_id, terminate=terminate and can_terminate)
    lines.append(f"revoked id={task_id} workers_answering={len(live)}: a worker that has not started it "
                 "discards it")
    if not running_on:
        lines.append(f"running id={task_id} on no answering worker")
    for node, pool in sorted(running_on.items()):
        if not terminate:
            lines.append(f"running id={task_id} worker={node} pool={pool}: it runs to its end "
                         "(add --terminate to stop it)")
        elif pool in CANNOT_TERMINATE:
            unkillable = True
            lines.append(f"cannot terminate id={task_id} worker={node} pool={pool}: Celery cannot stop a running "
                         f"task in the {pool} pool; it runs to its end (or to TASK_TIME_LIMIT), its result shows "
                         "REVOKED until then")
        else:
            lines.append(f"terminated id={task_id} worker={node} pool={pool} (SIGTERM to its process)")
    return lines, unkillable
