"""Flower's command line and environment, and its authentication rule (no Flower without authentication)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from config import ConfigError, Settings

log = logging.getLogger("entrypoint")

# Every way to give Flower credentials; the worker's environment gets none of them.
CREDENTIAL_VARIABLES = ("FLOWER_BASIC_AUTH", "FLOWER_BASIC_AUTH_FILE")


@dataclass(frozen=True)
class FlowerLaunch:
    argv: list[str]
    env: dict[str, str]


def worker_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment for the worker beside Flower: without Flower's credentials."""
    return {name: value for name, value in environ.items() if name not in CREDENTIAL_VARIABLES}


def prepare_flower(settings: Settings, environ: Mapping[str, str]) -> FlowerLaunch:
    """Flower's argv and environment; ConfigError when it would run without authentication by accident.

    The resolved credentials (environment, FLOWER_BASIC_AUTH_FILE or .env) reach Flower through its own
    FLOWER_BASIC_AUTH variable: never on a command line, never in a log.
    """
    port = settings.flower_port
    env = worker_environment(environ)
    if settings.flower_basic_auth:
        env["FLOWER_BASIC_AUTH"] = settings.flower_basic_auth
        auth = "basic auth (FLOWER_BASIC_AUTH)"
    elif environ.get("FLOWER_AUTH_PROVIDER") and environ.get("FLOWER_AUTH"):
        auth = f"OAuth ({environ['FLOWER_AUTH_PROVIDER']})"
    elif settings.flower_unauthenticated:
        auth = ""
    else:
        raise ConfigError("Flower needs authentication; allowed: FLOWER_BASIC_AUTH (or FLOWER_BASIC_AUTH_FILE), "
                          "Flower's OAuth options FLOWER_AUTH_PROVIDER and FLOWER_AUTH, or FLOWER_UNAUTHENTICATED=yes "
                          "on purpose")
    if auth:
        log.info("Flower on port %s with %s", port, auth)
    else:
        log.warning("WARNING: Flower runs WITHOUT authentication (FLOWER_UNAUTHENTICATED=yes): anyone who reaches "
                    "port %s can read task arguments and results and shut workers down", port)
    argv = ["celery", "-A", "worker.app", "flower", f"--port={port}"]
    # Workers gone after a rollout disappear from Flower instead of piling up (FLOWER_PURGE_OFFLINE_WORKERS is
    # Flower's own variable and wins).
    if not environ.get("FLOWER_PURGE_OFFLINE_WORKERS"):
        argv.append("--purge_offline_workers=60")
    return FlowerLaunch(argv, env)
