"""`python -m worker send TASK [ARG ...] --organization-id ID [--user-id ID]`: enqueue a task and print its result.

For trying the worker by hand (`make run` prints the command); producers use `task_launcher` or `send_task`.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from worker.tenant.context import Tenant
from worker.tenant.propagation import ORGANIZATION_HEADER, USER_HEADER


def _parse_arg(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", help="task name, e.g. rhesis.backend.tasks.echo")
    parser.add_argument("args", nargs="*", help="positional arguments (JSON or plain text)")
    parser.add_argument("--organization-id", help="tenant organization UUID")
    parser.add_argument("--user-id", help="tenant user UUID")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the result (0 = do not wait)")


def send(options: argparse.Namespace) -> int:
    from worker.app import app

    tenant = Tenant.of(options.organization_id, options.user_id)
    headers = {ORGANIZATION_HEADER: tenant.organization_id, USER_HEADER: tenant.user_id} if tenant.is_set else {}
    result = app.send_task(options.task, args=[_parse_arg(a) for a in options.args], headers=headers)
    print(f"sent {options.task} as {result.id}")
    if options.timeout > 0:
        print(json.dumps(result.get(timeout=options.timeout), default=str))
    return 0
