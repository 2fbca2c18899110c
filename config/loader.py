"""Environment (plus `.env`, plus `*_FILE` secrets) to validated :class:`config.settings.Settings`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

from config.options import OPTIONS
from config.settings import Settings
from config.spec import SCOPES, ConfigError, Option


def read_environment(environ: Mapping[str, str] | None = None,
                     env_file: str | os.PathLike | None = None) -> tuple[Mapping[str, str], dict[str, str]]:
    """The real environment and the `.env` file's values, kept apart so that the real one always wins."""
    environ = os.environ if environ is None else environ
    path = Path(env_file if env_file is not None else environ.get("ENV_FILE", ".env"))
    from_file = {k: v for k, v in dotenv_values(path).items() if v is not None} if path.is_file() else {}
    return environ, from_file


def _raw_value(option: Option, real: Mapping[str, str], from_file: Mapping[str, str]) -> str:
    # The real environment wins as a whole: its X or X_FILE hides both of the .env file's.
    file_var = f"{option.name}_FILE"
    for env in (real, from_file):
        if option.secret and env.get(file_var):
            if env.get(option.name):
                raise ConfigError(f"{option.name} and {file_var} are both set; allowed: only one of them")
            path = env[file_var]
            try:
                return Path(path).read_text().strip()
            except OSError as exc:
                raise ConfigError(
                    f"{file_var}={path!r} cannot be read ({exc.strerror}); allowed: a readable file") from None
        if option.name in env:
            return env[option.name]
    return option.default


def load_settings(environ: Mapping[str, str] | None = None, env_file: str | os.PathLike | None = None,
                  only: tuple[str, ...] | None = None, scopes: tuple[str, ...] | None = None) -> Settings:
    """Validate every declared variable, or those of ``scopes`` (see config.spec.SCOPES), or those named in
    ``only``; raise ConfigError on the first bad one. Fields left out are unset: reading them raises."""
    unknown = set(scopes or ()) - set(SCOPES)
    if unknown:
        raise ValueError(f"unknown scopes {sorted(unknown)}; known: {SCOPES}")
    real, from_file = read_environment(environ, env_file)
    values: dict[str, Any] = {}
    for option in OPTIONS:
        if only is not None and option.name not in only:
            continue
        if scopes is not None and option.scope not in scopes:
            continue
        values[option.name] = option.parse(_raw_value(option, real, from_file))
    _check_together(values)
    return Settings.from_values(values)


def _check_together(values: dict[str, Any]) -> None:
    """Rules that involve more than one variable."""
    soft, hard = values.get("TASK_SOFT_TIME_LIMIT"), values.get("TASK_TIME_LIMIT")
    if soft is not None and hard is not None and soft >= hard:
        raise ConfigError(f"TASK_SOFT_TIME_LIMIT={soft} is not below TASK_TIME_LIMIT={hard}; "
                          "allowed: a soft limit smaller than the hard limit")
    visibility = values.get("BROKER_VISIBILITY_TIMEOUT")
    countdown, backoff = values.get("TASK_MAX_COUNTDOWN"), values.get("TASK_RETRY_BACKOFF_MAX")
    if None not in (visibility, hard, countdown, backoff) and visibility <= hard + max(countdown, backoff):
        # A message waiting for its ETA (countdown or retry backoff) in a worker is unacknowledged too.
        raise ConfigError(f"BROKER_VISIBILITY_TIMEOUT={visibility} is not above TASK_TIME_LIMIT + max("
                          f"TASK_MAX_COUNTDOWN, TASK_RETRY_BACKOFF_MAX) ({hard + max(countdown, backoff)}); "
                          "allowed: a larger value, or redelivery would run long tasks twice")
    cert, key = values.get("REDIS_SSL_CERTFILE"), values.get("REDIS_SSL_KEYFILE")
    if bool(cert) != bool(key) and "REDIS_SSL_CERTFILE" in values and "REDIS_SSL_KEYFILE" in values:
        raise ConfigError("REDIS_SSL_CERTFILE and REDIS_SSL_KEYFILE must be set together; allowed: both or neither")
    max_age, interval = values.get("WORKER_HEARTBEAT_MAX_AGE"), values.get("WORKER_HEARTBEAT_INTERVAL")
    if max_age is not None and interval is not None and max_age <= interval:
        raise ConfigError(f"WORKER_HEARTBEAT_MAX_AGE={max_age} is not above WORKER_HEARTBEAT_INTERVAL={interval}; "
                          "allowed: a larger age")
