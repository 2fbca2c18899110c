"""What `make run` takes from the user, what it fills in, and the file that lets another shell use the same servers.

Everything is decided and validated (``config.load_settings`` on the final environment, with stand-ins for the
servers still to be started) before a server starts or a database is created, so a bad or partial setting stops
`make run` at once with one ``configuration error: ...`` line.
"""

from __future__ import annotations

import secrets
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from config import ConfigError, Settings, load_settings
from config.loader import read_environment
from worker.dev.provision import write_private_file

REDIS_URLS = ("BROKER_URL", "CELERY_RESULT_BACKEND")
DATABASE_URLS = ("DATABASE_URL", "MIGRATION_DATABASE_URL")
# What a shell beside `make run` needs to reach the same servers as the worker (`python -m worker send`, psql).
SHELL_VARIABLES = (*REDIS_URLS, *DATABASE_URLS, "REDIS_KEY_PREFIX", "REDIS_SSL_CERT_REQS", "REDIS_SSL_CA_CERTS",
                   "REDIS_SSL_CERTFILE", "REDIS_SSL_KEYFILE", "ENV_FILE")
# Valid values standing in for the servers `make run` has not started yet, so that validation comes first.
_STAND_INS = {
    "BROKER_URL": "redis://127.0.0.1:6379/0",
    "CELERY_RESULT_BACKEND": "redis://127.0.0.1:6379/1",
    "DATABASE_URL": "postgresql://dev_app@127.0.0.1:5432/dev",
    "MIGRATION_DATABASE_URL": "postgresql://dev_owner@127.0.0.1:5432/dev",
}
# Redis has 16 databases unless configured otherwise.
_LAST_REDIS_DATABASE = 15


@dataclass(frozen=True)
class DevEnvironment:
    env: dict[str, str]
    start_redis: bool  # no BROKER_URL given: the machine's Redis, else an embedded one
    provision_database: bool  # no DATABASE_URL given: a development database on a local PostgreSQL
    generated_flower_auth: bool  # FLOWER_BASIC_AUTH made up here, so it may be printed


def derive_result_backend(broker_url: str) -> str:
    """The broker's server and credentials with the next database number (``/0`` -> ``/1``, none -> ``/1``).

    A broker already on the last default database (15) shares it with the results: their keys
    (``celery-task-meta-*``) never collide with the broker's.
    """
    parts = urlsplit(broker_url)
    number = parts.path.strip("/")
    database = int(number) + 1 if number.isdigit() else 1
    if number.isdigit() and int(number) >= _LAST_REDIS_DATABASE:
        database = int(number)
    return parts._replace(path=f"/{database}").geturl()


def plan(environ: Mapping[str, str], run_dir: Path) -> DevEnvironment:
    """The worker's environment with make run's defaults and derived values; raises ConfigError when the given
    variables are a set make run cannot complete, or any value is invalid."""
    env = dict(environ)
    real, from_file = read_environment(dict(environ))  # what the user gave, apart from what is filled in below

    def given(name: str) -> bool:
        return any(source.get(name) or source.get(f"{name}_FILE") for source in (real, from_file))

    if given("CELERY_RESULT_BACKEND") and not given("BROKER_URL"):
        raise ConfigError("CELERY_RESULT_BACKEND is set but BROKER_URL is not; allowed for make run: BROKER_URL "
                          "alone (the result backend is derived from it), both, or neither (a local Redis)")
    if given("MIGRATION_DATABASE_URL") and not given("DATABASE_URL"):
        raise ConfigError("MIGRATION_DATABASE_URL is set but DATABASE_URL is not; allowed for make run: "
                          "DATABASE_URL (with or without MIGRATION_DATABASE_URL), or neither (a development "
                          "database is created)")
    if given("BROKER_URL") and not given("CELERY_RESULT_BACKEND"):
        env["CELERY_RESULT_BACKEND"] = derive_result_backend(load_settings(env, only=("BROKER_URL",)).broker_url)

    def default(name: str, value: str) -> None:
        if not given(name) and name not in real:
            env[name] = value

    generated_auth = not given("FLOWER_BASIC_AUTH")
    if generated_auth:
        env["FLOWER_BASIC_AUTH"] = f"admin:{secrets.token_urlsafe(12)}"
    # The API service `make run` starts beside the worker signs its tokens with this; a fresh random key unless given.
    if not given("API_TOKEN_SECRET"):
        env["API_TOKEN_SECRET"] = secrets.token_hex(32)
    default("ENABLE_FLOWER", "yes")
    default("CELERY_WORKER_CONCURRENCY", "2")
    # The demo endpoint (python -m worker demo-endpoint) listens on loopback, which production refuses.
    default("EXECUTION_ALLOW_PRIVATE_TARGETS", "yes")
    default("WORKER_HEALTH_DIR", str((run_dir / "health").absolute()))  # the option takes absolute paths only
    result = DevEnvironment(env, start_redis=not given("BROKER_URL"), provision_database=not given("DATABASE_URL"),
                            generated_flower_auth=generated_auth)
    validate(result)
    return result


def validate(dev: DevEnvironment) -> Settings:
    """load_settings on the final environment; servers not started yet are represented by stand-ins."""
    candidate = dict(dev.env)
    if dev.start_redis:
        candidate.update({name: _STAND_INS[name] for name in REDIS_URLS})
    if dev.provision_database:
        candidate.update({name: _STAND_INS[name] for name in DATABASE_URLS})
    return load_settings(candidate)


def write_shell_env(path: Path, env: Mapping[str, str]) -> list[str]:
    """Write the connection settings as ``NAME='value'`` lines a POSIX shell can source (mode 0600: they hold
    passwords); return the names written. ``*_FILE`` variants are written as they are, never their content."""
    names = [key for name in SHELL_VARIABLES for key in (name, f"{name}_FILE") if env.get(key)]
    lines = [f"# Written by `make run`: the servers it uses. Another shell: set -a; . {shlex.quote(str(path))}; set +a"]
    lines += [f"{name}={shlex.quote(env[name])}" for name in names]
    write_private_file(path, "\n".join(lines) + "\n")
    return names
