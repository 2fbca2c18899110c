"""``python -m worker COMMAND``: every command of the product, in one place.

Settings:  ``check`` (validate, print masked), ``table`` / ``update-readme`` (the README's variable table),
           ``worker-args`` (the validated ``celery worker`` argv, NUL-separated).
Launcher:  ``run`` (alias ``worker``; with ``ENABLE_FLOWER=yes`` also Flower), ``flower``: validate every setting,
           log them masked, then ``exec`` celery from PATH. ``drain`` (preStop), ``healthcheck [--ready]``.
Database:  ``migrate``, ``demo-data``. Execution: ``sweep``. Producer: ``send``.
API:       ``api`` (the task and run API service), ``api-token`` (a bearer token for it).
On call:   ``doctor``, ``queues``, ``stuck``, ``revoke``, ``purge``, ``inspect`` (docs/troubleshooting.md).

A bad setting exits 64 (EX_USAGE) with one line ``configuration error: ...`` on stderr, before anything starts.
Handlers import what they need when they run, so that ``healthcheck`` never loads Celery.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

EX_USAGE = 64
CONFIG_COMMANDS = ("check", "table", "worker-args", "update-readme")


class _ConfigParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # `python -m config` always answered a bad command with one line and EX_USAGE, like a bad setting.
        self.exit(EX_USAGE, f"{self.prog}: {message}\n")


def _handler(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from importlib import import_module

        return getattr(import_module(f"worker.cli.{module}"), name)(args)

    return run


def build_parser(command: str | None = None, commands: Sequence[str] | None = None,
                 prog: str = "python -m worker") -> argparse.ArgumentParser:
    """The parser; ``command`` (the first argument) decides whether ``send``'s own options are loaded."""
    # `python -m worker` keeps argparse's usage status (2); the `python -m config` alias keeps its 64.
    parser_class = argparse.ArgumentParser if commands is None else _ConfigParser
    parser = parser_class(prog=prog, description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=parser_class)

    def add(name: str, help_text: str, module: str, function: str,
            aliases: Sequence[str] = ()) -> argparse.ArgumentParser:
        if commands is not None and name not in commands:
            return argparse.ArgumentParser()  # not offered here; never parsed
        p = sub.add_parser(name, help=help_text, aliases=list(aliases))
        p.set_defaults(handler=_handler(module, function))
        return p

    add("check", "validate every setting and print them (secrets masked)", "settings_commands", "check")
    add("table", "print the README's table of variables", "settings_commands", "table")
    readme = add("update-readme", "rewrite the table in README.md", "settings_commands", "update_readme")
    readme.add_argument("readme", nargs="?", default="README.md")
    add("worker-args", "print the celery worker argv, NUL-separated", "settings_commands", "worker_args")

    add("run", "start the worker (and Flower with ENABLE_FLOWER=yes)", "launch_commands", "run",
        aliases=("worker",))
    add("flower", "start Flower alone", "launch_commands", "flower")
    drain = add("drain", "preStop: stop consuming and wait for the running tasks", "health_commands", "drain")
    drain.add_argument("timeout", nargs="?", type=float, help="seconds (default CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT)")
    check = add("healthcheck", "exit 0 when the heartbeat is fresh (and, with --ready, the worker consumes)",
                "health_commands", "healthcheck")
    check.add_argument("--ready", action="store_true", help="also require the ready marker")
    check.add_argument("ready_word", nargs="?", choices=["ready"], help=argparse.SUPPRESS)

    migrate = add("migrate", "apply migrations as MIGRATION_DATABASE_URL, grant DATABASE_URL", "database_commands",
                  "migrate")
    migrate.add_argument("--allow-owner-runtime", action="store_true",
                         help="development only: accept DATABASE_URL and MIGRATION_DATABASE_URL being one role")
    demo = add("demo-data", "insert demo organizations into a migrated database", "database_commands", "demo_data")
    demo.add_argument("--json", action="store_true", help="print the summary as JSON")
    demo.add_argument("--endpoint-url", default=None,
                      help="point the demo endpoints at this URL (e.g. python -m worker demo-endpoint's)")
    endpoint = add("demo-endpoint", "serve a demo LLM endpoint on loopback (answers {\"output\": ...})",
                   "execution_commands", "demo_endpoint")
    endpoint.add_argument("--port", type=int, default=8099)
    endpoint.add_argument("--latency", type=float, default=0.05, help="seconds before each answer")
    swept = add("sweep", "settle stalled test runs of every organization once", "execution_commands", "sweep")
    swept.add_argument("--stall-seconds", type=int, default=None,
                       help="a run untouched this long is stalled (default EXECUTION_STALL_SECONDS)")
    api = add("api", "serve the task and run API (needs the api extra; docs/api.md)", "api_commands", "api")
    api.add_argument("--host", default=None, help="address to listen on (default API_HOST)")
    api.add_argument("--port", type=int, default=None, help="port to listen on (default API_PORT)")
    api.add_argument("--auth", default=None, metavar="MODULE:NAME",
                     help="a FastAPI dependency returning the current user, instead of the bearer tokens")
    token = add("api-token", "print a bearer token of the API for a user of the database", "api_commands",
                "api_token")
    token.add_argument("--organization-id", required=True)
    token.add_argument("--user-id", required=True)
    token.add_argument("--lifetime", type=int, default=30 * 24 * 3600, help="seconds (default 30 days)")
    _add_ops_commands(add)
    send = add("send", "enqueue a task for a tenant and print its result", "database_commands", "send")
    if command in (None, "send", "-h", "--help"):
        from worker.send import add_arguments  # imports the tenant code: only when send is asked for

        add_arguments(send)
    return parser


def _add_ops_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    def timeout(parser: argparse.ArgumentParser, default: float = 1.0) -> None:
        parser.add_argument("--timeout", type=float, default=default,
                            help=f"seconds to wait for workers' answers (default {default:g})")

    doctor = add("doctor", "check settings, Redis, TLS, database, RLS, migration and consumers; exit 1 on a "
                 "failure", "ops_commands", "doctor")
    doctor.add_argument("--json", action="store_true")
    timeout(doctor, 2.0)
    queues = add("queues", "depth of every queue (priorities included), unacknowledged messages, oldest age",
                 "ops_commands", "queues")
    queues.add_argument("--json", action="store_true")
    stuck = add("stuck", "STARTED tasks older than a threshold, stalled runs, pending chord_unlock tasks",
                "ops_commands", "stuck")
    stuck.add_argument("--older-than", type=int, default=None, metavar="SECONDS",
                       help="a STARTED task older than this is stuck (default TASK_TIME_LIMIT)")
    stuck.add_argument("--stall-seconds", type=int, default=None,
                       help="a run untouched this long is stalled (default EXECUTION_STALL_SECONDS)")
    stuck.add_argument("--fix", action="store_true", help="revoke stuck tasks and settle stalled runs (asks first)")
    stuck.add_argument("--yes", action="store_true", help="with --fix: do not ask")
    stuck.add_argument("--json", action="store_true")
    timeout(stuck)
    revoke = add("revoke", "revoke a task; --terminate stops it where the pool can", "ops_commands", "revoke")
    revoke.add_argument("task_id")
    revoke.add_argument("--terminate", action="store_true", help="also stop it if running (prefork, solo only)")
    timeout(revoke)
    purge = add("purge", "delete every waiting message of a queue (asks first)", "ops_commands", "purge")
    purge.add_argument("queue")
    purge.add_argument("--yes", action="store_true", help="do not ask")
    inspect = add("inspect", "active, reserved and scheduled tasks per worker, with their tenant", "ops_commands",
                  "inspect")
    inspect.add_argument("--json", action="store_true")
    timeout(inspect)


def main(argv: Sequence[str] | None = None, commands: Sequence[str] | None = None,
         prog: str = "python -m worker") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv[0] if argv else None, commands, prog)
    args, unknown = parser.parse_known_args(argv)
    if args.command in ("run", "worker"):
        args.stray = argv[1:]  # refused by `run` with a hint (exit 64)
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except Exception as exc:
        from config.spec import ConfigError

        if not isinstance(exc, ConfigError):
            raise
        print(f"configuration error: {exc}", file=sys.stderr)
        return EX_USAGE
