"""``python -m worker <command>``: database maintenance and a hand-held producer for the worker.

Commands: ``migrate`` (schema, grants and row-level security check), ``demo-data`` and ``send`` (enqueue a task
by hand). Each subcommand is a
function registered in ``build_parser``; add new ones there. A bad setting exits 64 (EX_USAGE) with
``configuration error: ...`` on stderr, like ``python -m config``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence

from sqlalchemy.exc import OperationalError

from config import ConfigError, mask_url
from worker.db import MigrationError
from worker.send import SendUsageError

EX_USAGE = 64
EX_FAILURE = 1


def cmd_migrate(args: argparse.Namespace) -> int:
    from worker.db.engine import role_name
    from worker.db.migrate import migrate
    from worker.settings import get_settings

    settings = get_settings()
    migrate(settings.migration_url, settings.database_url, allow_owner_runtime=args.allow_owner_runtime)
    print(f"migrated {mask_url(settings.migration_url)} (runtime role: {role_name(settings.database_url)})")
    return 0


def cmd_demo_data(args: argparse.Namespace) -> int:
    from worker.db.demo_data import create_demo_data, format_summary
    from worker.settings import get_settings

    summary = create_demo_data(get_settings().migration_url)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    from worker.send import send

    return send(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    migrate = commands.add_parser("migrate", help="apply migrations as MIGRATION_DATABASE_URL, grant DATABASE_URL")
    migrate.add_argument("--allow-owner-runtime", action="store_true",
                         help="development only: accept DATABASE_URL and MIGRATION_DATABASE_URL being one role")
    migrate.set_defaults(handler=cmd_migrate)

    demo = commands.add_parser("demo-data", help="insert demo organizations into a migrated database")
    demo.add_argument("--json", action="store_true", help="print the summary as JSON")
    demo.set_defaults(handler=cmd_demo_data)

    from worker.send import add_arguments

    send = commands.add_parser("send", help="enqueue a task for a tenant and print its result")
    add_arguments(send)
    send.set_defaults(handler=cmd_send)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # Alembic announces every plugin it loads at INFO.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EX_USAGE
    except SendUsageError as exc:
        print(f"{args.command}: {exc}", file=sys.stderr)
        return EX_USAGE
    except MigrationError as exc:
        print(f"{args.command}: {exc}", file=sys.stderr)
        return EX_FAILURE
    except OperationalError as exc:
        # The driver's message names host and database, never the password.
        message = " ".join(str(exc.orig).split())
        print(f"{args.command}: database unavailable: {message}", file=sys.stderr)
        return EX_FAILURE


if __name__ == "__main__":
    sys.exit(main())
