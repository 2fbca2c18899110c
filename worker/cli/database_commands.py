"""``migrate``, ``demo-data`` and ``send``: database maintenance and a hand-held producer.

Expected failures are one line on stderr: a bad setting or usage 64, a failed migration or an unavailable
database 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable

EX_USAGE = 64
EX_FAILURE = 1


def _one_line_errors(command: str, body: Callable[[], int]) -> int:
    from sqlalchemy.exc import OperationalError

    from worker.db import MigrationError
    from worker.send import SendUsageError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # Alembic announces every plugin it loads at INFO.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    try:
        return body()
    except SendUsageError as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return EX_USAGE
    except MigrationError as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return EX_FAILURE
    except OperationalError as exc:
        # The driver's message names host and database, never the password.
        message = " ".join(str(exc.orig).split())
        print(f"{command}: database unavailable: {message}", file=sys.stderr)
        return EX_FAILURE


def migrate(args: argparse.Namespace) -> int:
    def body() -> int:
        from config import mask_url
        from worker.db.engine import role_name
        from worker.db.migrate import migrate as apply_migrations
        from worker.settings import get_settings

        settings = get_settings()
        apply_migrations(settings.migration_url, settings.database_url, allow_owner_runtime=args.allow_owner_runtime)
        print(f"migrated {mask_url(settings.migration_url)} (runtime role: {role_name(settings.database_url)})")
        return 0

    return _one_line_errors("migrate", body)


def demo_data(args: argparse.Namespace) -> int:
    def body() -> int:
        from worker.db.demo_data import create_demo_data, format_summary
        from worker.settings import get_settings

        summary = create_demo_data(get_settings().migration_url, endpoint_url=args.endpoint_url)
        print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
        return 0

    return _one_line_errors("demo-data", body)


def send(args: argparse.Namespace) -> int:
    from worker.send import send as send_task

    return _one_line_errors("send", lambda: send_task(args))
