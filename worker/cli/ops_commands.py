"""``doctor``, ``queues``, ``stuck``, ``revoke``, ``purge``, ``inspect``: the on-call commands
(docs/troubleshooting.md). Output is one greppable line per fact (``--json`` where offered); never a secret.

Exit statuses: 0 done; 1 a check failed (``doctor``), a service is unavailable, or the operator declined;
2 ``revoke --terminate`` met a pool that cannot terminate; 64 a bad setting or argument.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

EX_FAILURE = 1
EX_CANNOT_TERMINATE = 2
EX_USAGE = 64


def _confirm(question: str, yes: bool) -> bool:
    if yes:
        return True
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline().strip().lower()
    return answer in ("y", "yes")


def _with_app(command: str, body: Callable[[Any, Any], int]) -> int:
    """Settings validated first (64 on a bad one), then a client app; a dead broker or database is one line."""
    from config import load_settings

    settings = load_settings()
    from kombu.exceptions import OperationalError as BrokerError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from sqlalchemy.exc import OperationalError as DatabaseError

    from worker.app import create_app

    app = create_app(settings, main=f"ops-{command}")
    # One attempt, not Celery's unbounded waits: an on-call tool must answer, also when the broker is down.
    app.conf.broker_connection_retry = False
    app.conf.broker_connection_max_retries = 0
    app.conf.result_backend_always_retry = False
    app.conf.broker_transport_options = {**app.conf.broker_transport_options, "socket_connect_timeout": 3,
                                         "max_retries": 0}
    try:
        return body(app, settings)
    except (BrokerError, RedisConnectionError, ConnectionError, OSError) as exc:
        print(f"{command}: broker unavailable: {' '.join(str(exc).split())}", file=sys.stderr)
        return EX_FAILURE
    except DatabaseError as exc:
        print(f"{command}: database unavailable: {' '.join(str(exc.orig).split())}", file=sys.stderr)
        return EX_FAILURE
    finally:
        app.close()


def doctor(args: argparse.Namespace) -> int:
    from worker.ops.doctor import doctor as run

    found: list[dict[str, str]] = []

    def emit(check: Any) -> None:
        if args.json:
            found.append(check.as_json())
        else:
            print(check.line(), flush=True)

    status = run(emit, args.timeout)
    if args.json:
        print(json.dumps({"ok": status == 0, "checks": found}, indent=2))
    return status


def queues(args: argparse.Namespace) -> int:
    def body(app: Any, settings: Any) -> int:
        from worker.ops.broker import broker_view, known_queues, queue_depths

        with broker_view(app) as view:
            depths, unacked = queue_depths(view, known_queues(view, settings.celery_worker_queues))
        if args.json:
            print(json.dumps({"queues": [d.as_json() for d in depths], "unacked_total": unacked}, indent=2))
        else:
            for depth in depths:
                print(depth.line())
            print(f"unacked total={unacked}")
        return 0

    return _with_app("queues", body)


def stuck(args: argparse.Namespace) -> int:
    def body(app: Any, settings: Any) -> int:
        from worker.ops.tasks import find_stuck, fix_stuck

        threshold = args.older_than if args.older_than is not None else settings.task_time_limit
        stall = args.stall_seconds if args.stall_seconds is not None else settings.execution_stall_seconds
        report = find_stuck(app, threshold, stall, settings.celery_worker_queues, args.timeout)
        if args.json:
            print(json.dumps(report.as_json(), indent=2))
        else:
            print("\n".join(report.lines(stall)))
        if not args.fix or not report.found:
            return 0
        if not _confirm(f"fix {report.found} stuck item(s) (revoke tasks, settle runs)?", args.yes):
            print("stuck: nothing changed", file=sys.stderr)
            return EX_FAILURE
        for line in fix_stuck(app, report, stall):
            print(line)
        return 0

    return _with_app("stuck", body)


def revoke(args: argparse.Namespace) -> int:
    def body(app: Any, settings: Any) -> int:
        from worker.ops.tasks import revoke as revoke_task

        try:
            lines, unkillable = revoke_task(app, args.task_id, args.terminate, args.timeout)
        except ValueError:
            print(f"revoke: {args.task_id!r} is not a task id (a UUID)", file=sys.stderr)
            return EX_USAGE
        print("\n".join(lines))
        return EX_CANNOT_TERMINATE if unkillable else 0

    return _with_app("revoke", body)


def purge(args: argparse.Namespace) -> int:
    def body(app: Any, settings: Any) -> int:
        from worker.ops.broker import broker_view, queue_depths
        from worker.ops.broker import purge as purge_queue

        with broker_view(app) as view:
            depth = queue_depths(view, [args.queue])[0][0]
            if not depth.waiting:
                print(f"purged queue={args.queue} messages=0 (nothing waiting)")
                return 0
            if not _confirm(f"delete {depth.waiting} waiting message(s) of queue {args.queue}? This cannot be "
                            "undone", args.yes):
                print("purge: nothing deleted", file=sys.stderr)
                return EX_FAILURE
            removed = purge_queue(view, args.queue)
        print(f"purged queue={args.queue} messages={removed} (unacknowledged messages stay with their workers)")
        return 0

    return _with_app("purge", body)


def inspect(args: argparse.Namespace) -> int:
    def body(app: Any, settings: Any) -> int:
        from worker.ops.tasks import inspect_lines, worker_tasks

        tasks = worker_tasks(app, args.timeout)
        if args.json:
            print(json.dumps(tasks, indent=2))
        else:
            print("\n".join(inspect_lines(tasks) or [f"no worker answered within {args.timeout:g}s"]))
        return 0 if tasks else EX_FAILURE

    return _with_app("inspect", body)
