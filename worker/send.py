"""`python -m worker send TASK [ARG ...] --organization-id ID [--user-id ID]`: enqueue a task and print its result.

For trying the worker by hand (`make run` prints the command); producers use `task_launcher` or `send_task`.
Every expected failure is one line on stderr: a bad id exits 64 (EX_USAGE), a task that raised or an unreachable
broker or result backend 1, no result within ``--timeout`` 124 (like timeout(1)).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from worker.errors import InvalidTenantError
from worker.tenant.context import Tenant, normalize_id

EX_FAILURE = 1
EX_TIMEOUT = 124


class SendUsageError(Exception):
    """The command line cannot be sent as given (exit 64)."""


def _parse_arg(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", help="task name, e.g. rhesis.backend.tasks.echo")
    parser.add_argument("args", nargs="*", help="positional arguments (JSON or plain text)")
    parser.add_argument("--organization-id", help="tenant organization UUID")
    parser.add_argument("--user-id", help="tenant user UUID (needs --organization-id)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the result (0 = do not wait)")


def tenant_of(options: argparse.Namespace) -> Tenant:
    """The tenant named on the command line; SendUsageError names the option and what is allowed."""
    try:
        tenant = Tenant(normalize_id(options.organization_id, "--organization-id"),
                        normalize_id(options.user_id, "--user-id"))
    except InvalidTenantError as exc:
        raise SendUsageError(f"{exc}; allowed: a UUID such as the ids `make run` lists") from None
    if tenant.user_id is not None and not tenant.is_set:
        raise SendUsageError("--user-id needs --organization-id; allowed: both, or --organization-id alone")
    return tenant


def send(options: argparse.Namespace) -> int:
    from celery.exceptions import TimeoutError as ResultTimeout
    from kombu.exceptions import OperationalError as BrokerError
    from redis.exceptions import ConnectionError as RedisConnectionError

    tenant = tenant_of(options)  # before connecting anywhere
    from worker.app import app

    headers = tenant.headers()  # tenant_of refused a user without an organization
    # Both servers are checked first: send_task itself would retry an unreachable result backend 20 times,
    # logging a line and a traceback for each.
    for what, check in (("broker", lambda: _check_broker(app)), ("result backend", app.backend.client.ping)):
        try:
            check()
        except (BrokerError, RedisConnectionError) as exc:
            print(f"send: {what} unavailable: {' '.join(str(exc).split())}", file=sys.stderr)
            return EX_FAILURE
    result = app.send_task(options.task, args=[_parse_arg(a) for a in options.args], headers=headers)
    print(f"sent {options.task} as {result.id}", flush=True)
    if options.timeout <= 0:
        return 0
    try:
        value = result.get(timeout=options.timeout, propagate=False)
    except ResultTimeout:
        print(f"send: no result for {result.id} within {options.timeout:g}s; is a worker running on this broker "
              "(and REDIS_KEY_PREFIX), and does it know the task?", file=sys.stderr)
        return EX_TIMEOUT
    except (BrokerError, RedisConnectionError) as exc:
        print(f"send: result backend unavailable: {' '.join(str(exc).split())}", file=sys.stderr)
        return EX_FAILURE
    if not result.successful():
        reason = f"{type(value).__name__}: {value}" if isinstance(value, BaseException) else str(value)
        print(f"send: {options.task} {result.id} ended {result.state}: {' '.join(reason.split())}", file=sys.stderr)
        return EX_FAILURE
    print(json.dumps(value, default=str))
    return 0


def _check_broker(app: Any) -> None:
    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0)
