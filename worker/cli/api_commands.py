"""``api`` (the task and run API service) and ``api-token`` (a bearer token for a user of the database)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

EX_USAGE = 64
EX_FAILURE = 1
log = logging.getLogger("entrypoint")


def _load_dependency(spec: str) -> Any:
    """``package.module:name`` -> that object (the --auth dependency)."""
    from importlib import import_module

    from config import ConfigError

    module, _, name = spec.partition(":")
    if not module or not name:
        raise ConfigError(f"--auth {spec!r} is not MODULE:NAME; allowed: a FastAPI dependency such as "
                          "mypackage.auth:current_user")
    try:
        return getattr(import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"--auth {spec!r} cannot be loaded ({type(exc).__name__}); allowed: an importable "
                          "MODULE:NAME") from None


def api(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="entrypoint: %(message)s", stream=sys.stderr)
    try:
        import uvicorn

        from worker.api.service import create_app
    except ImportError as exc:
        print(f"api: the API needs the api extra ({exc.name} is missing): pip install 'tenant-worker[api]'",
              file=sys.stderr)
        return EX_FAILURE
    from config import load_settings
    from config.options import OPTIONS

    settings = load_settings()  # every scope, like the worker's launcher: one configuration, checked once
    current_user = _load_dependency(args.auth) if args.auth else None
    app = create_app(current_user, settings=settings)  # ConfigError without API_TOKEN_SECRET (and no --auth)
    host = args.host or settings.api_host
    port = args.port or settings.api_port
    for option in OPTIONS:
        if option.scope in ("app", "api"):  # what this process uses (the worker's launcher logs the rest)
            log.info("setting %s=%s", option.name, option.show(getattr(settings, option.attribute)))
    log.info("API on http://%s:%s/ with %s", host, port,
             f"authentication {args.auth}" if args.auth else "bearer tokens (API_TOKEN_SECRET)")
    logging.getLogger("worker").setLevel(settings.log_level)
    from worker.health.files import API_PORT, HealthFiles

    health = HealthFiles(settings.worker_health_dir)  # `python -m worker healthcheck` in this container asks /healthz
    if health.start_role("api"):
        health.write(API_PORT, f"{port}\n")
    # Event streams stay open while their runs go on: after SIGTERM they get a few seconds, then are closed.
    config = uvicorn.Config(app, host=host, port=port, log_level=settings.log_level.lower(), server_header=False,
                            timeout_graceful_shutdown=5, access_log=True)
    _server_class()(config).run()
    return 0


def _server_class() -> type:
    """Built on first use: uvicorn comes with the api extra."""
    import contextlib
    import signal
    from collections.abc import Iterator

    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn re-raises SIGTERM/SIGINT once it has shut down gracefully, so the process would end "killed by
        SIGTERM" (status 143) or with a KeyboardInterrupt traceback; a graceful shutdown exits 0 here, like the
        worker's warm shutdown."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return Server


def api_token(args: argparse.Namespace) -> int:
    from worker.cli.database_commands import _one_line_errors

    def body() -> int:
        import uuid

        from config import load_settings
        from worker.api.tokens import mint
        from worker.db.models import User
        from worker.db.session import tenant_session
        from worker.errors import TenantConflictError

        settings = load_settings(scopes=("app", "api"))
        if not settings.api_token_secret:
            print("api-token: API_TOKEN_SECRET is empty; set it (the same keys as the API service) first",
                  file=sys.stderr)
            return EX_USAGE
        try:
            organization, user = uuid.UUID(args.organization_id), uuid.UUID(args.user_id)
        except ValueError:
            print("api-token: --organization-id and --user-id must be UUIDs", file=sys.stderr)
            return EX_USAGE
        try:
            with tenant_session(organization, user) as db:
                found = db.get(User, user) is not None
        except TenantConflictError:
            found = False
        if not found:
            print(f"api-token: organization {organization} has no user {user}", file=sys.stderr)
            return EX_FAILURE
        print(mint(settings.api_token_secret, organization, user, lifetime=args.lifetime))
        return 0

    return _one_line_errors("api-token", body)
