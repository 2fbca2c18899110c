"""Configuration: every bad value stops startup with one clear line; secrets via *_FILE; .env precedence."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from config import ConfigError, load_settings, mask_url
from config.options import OPTIONS

ROOT = Path(__file__).resolve().parents[1]
NO_ENV_FILE = {"ENV_FILE": "/nonexistent/.env"}


def run_check(env: dict[str, str], command: str = "check") -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in {o.name for o in OPTIONS}}
    return subprocess.run([sys.executable, "-m", "config", command], cwd=ROOT, env={**clean, **NO_ENV_FILE, **env},
                          capture_output=True, text=True, timeout=60)


BAD_VALUES = [
    ("BROKER_URL", "http://broker:6379/0", "unknown URL scheme 'http'"),
    ("BROKER_URL", "amqp://guest:hunter2@rabbit//", "unknown URL scheme 'amqp'"),
    ("CELERY_RESULT_BACKEND", "redis://:s3cret@host:notaport/1", "invalid port"),
    ("CELERY_RESULT_BACKEND", "redis:///1", "has no host"),
    ("DATABASE_URL", "mysql://u:p@h/db", "unknown URL scheme 'mysql'"),
    ("MIGRATION_DATABASE_URL", "sqlite:///x.db", "unknown URL scheme 'sqlite'"),
    ("REDIS_SOCKET_TIMEOUT", "thirty", "is not an integer"),
    ("REDIS_SOCKET_TIMEOUT", "0", "is below the minimum"),
    ("REDIS_MAX_CONNECTIONS", "100000", "is above the maximum"),
    ("REDIS_RETRY_ON_TIMEOUT", "maybe", "is not a yes/no word"),
    ("REDIS_SSL_CERT_REQS", "sometimes", "is not a known value"),
    ("REDIS_SSL_CA_CERTS", "/nonexistent/ca.pem", "is not an existing file"),
    ("LOG_LEVEL", "LOUD", "is not a known value"),
    ("CELERY_WORKER_LOGLEVEL", "verbose", "is not a known value"),
    ("CELERY_WORKER_CONCURRENCY", "-1", "is below the minimum"),
    ("CELERY_WORKER_CONCURRENCY", "2.5", "is not an integer"),
    ("CELERY_WORKER_PREFETCH_MULTIPLIER", "0", "is below the minimum"),
    ("CELERY_WORKER_POOL", "eventlet", "is not a known value"),
    ("CELERY_WORKER_QUEUES", "celery,,exec ution", "invalid entry 'exec ution'"),
    ("CELERY_WORKER_QUEUES", " , ", "is empty"),
    ("BROKER_VISIBILITY_TIMEOUT", "30", "is below the minimum"),
    ("BROKER_VISIBILITY_TIMEOUT", "3700", "is not above TASK_TIME_LIMIT + max(TASK_MAX_COUNTDOWN"),
    ("BROKER_URL", "unix:///run/redis.sock", "unknown URL scheme 'unix'"),
    ("TASK_SOFT_TIME_LIMIT", "4000", "is not below TASK_TIME_LIMIT"),
    ("ENABLE_FLOWER", "perhaps", "is not a known value"),
    ("CELERY_WORKER_HOSTNAME", "bad name/with spaces", "has characters that are not allowed"),
    ("REDIS_KEY_PREFIX", "tenant worker", "has characters that are not allowed"),
    ("FLOWER_PORT", "70000", "is above the maximum"),
    ("WORKER_HEARTBEAT_MAX_AGE", "5", "is not above WORKER_HEARTBEAT_INTERVAL"),
]


@pytest.mark.parametrize(("variable", "value", "problem"), BAD_VALUES, ids=[f"{v}={x}" for v, x, _ in BAD_VALUES])
def test_bad_value_stops_startup_with_one_clear_line(variable: str, value: str, problem: str) -> None:
    result = run_check({variable: value})
    assert result.returncode == 64
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("configuration error: ")
    assert variable in lines[0] and problem in lines[0]
    assert "allowed:" in lines[0]
    assert result.stdout == ""


@pytest.mark.parametrize("variable", ["BROKER_URL", "CELERY_RESULT_BACKEND", "DATABASE_URL"])
@pytest.mark.parametrize("url", ["ftp://admin:TopSecret99@example.invalid:21/x",
                                 "redis://admin:Top/Secret99@host:6379/0",
                                 "postgresql://admin:Top@Secret99@db:notaport/x"])
def test_passwords_never_appear_in_errors(variable: str, url: str) -> None:
    result = run_check({variable: url.replace("redis://", "postgresql://") if variable == "DATABASE_URL" and
                        url.startswith("redis") else url})
    assert "Secret99" not in result.stderr + result.stdout
    if result.returncode == 64:
        assert "admin:***@" in result.stderr


def test_check_output_masks_passwords() -> None:
    result = run_check({"BROKER_URL": "rediss://:RedisPass1@redis.example:6380/0",
                        "DATABASE_URL": "postgresql://app:DbPass2@db/app"})
    assert result.returncode == 0, result.stderr
    assert "RedisPass1" not in result.stdout and "DbPass2" not in result.stdout
    assert "BROKER_URL=rediss://:***@redis.example:6380/0" in result.stdout
    assert "DATABASE_URL=postgresql://app:***@db/app" in result.stdout


def test_defaults_are_valid() -> None:
    settings = load_settings(environ=NO_ENV_FILE)
    assert settings.broker_url == "redis://localhost:6379/0"
    assert settings.celery_result_backend == "redis://localhost:6379/1"
    assert settings.migration_url == settings.database_url
    assert settings.celery_worker_queues == ("celery", "execution")
    assert settings.redis_socket_timeout == 30


def test_secret_file_variant(tmp_path: Path) -> None:
    secret = tmp_path / "broker"
    secret.write_text("redis://:FromFile@redis.internal:6379/3\n")
    settings = load_settings(environ={**NO_ENV_FILE, "BROKER_URL_FILE": str(secret)})
    assert settings.broker_url == "redis://:FromFile@redis.internal:6379/3"


def test_secret_file_and_plain_value_together_is_an_error(tmp_path: Path) -> None:
    secret = tmp_path / "db"
    secret.write_text("postgresql://a@b/c")
    with pytest.raises(ConfigError, match="DATABASE_URL and DATABASE_URL_FILE are both set"):
        load_settings(environ={**NO_ENV_FILE, "DATABASE_URL": "postgresql://x@y/z", "DATABASE_URL_FILE": str(secret)})


def test_missing_secret_file_is_reported() -> None:
    result = run_check({"MIGRATION_DATABASE_URL_FILE": "/run/secrets/nope"})
    assert result.returncode == 64
    assert "MIGRATION_DATABASE_URL_FILE='/run/secrets/nope' cannot be read" in result.stderr


def test_secret_file_content_is_validated(tmp_path: Path) -> None:
    secret = tmp_path / "broker"
    secret.write_text("http://u:LeakMe@h/0")
    result = run_check({"BROKER_URL_FILE": str(secret)})
    assert result.returncode == 64
    assert "BROKER_URL=" in result.stderr and "LeakMe" not in result.stderr


def test_non_secret_variables_have_no_file_variant(tmp_path: Path) -> None:
    value = tmp_path / "n"
    value.write_text("3")
    settings = load_settings(environ={**NO_ENV_FILE, "CELERY_WORKER_CONCURRENCY_FILE": str(value)})
    assert settings.celery_worker_concurrency == 8


def test_dotenv_is_read_and_real_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("CELERY_WORKER_CONCURRENCY=3\nLOG_LEVEL=DEBUG\nBROKER_URL=redis://from-dotenv:6379/0\n")
    settings = load_settings(environ={"ENV_FILE": str(env_file), "LOG_LEVEL": "ERROR"})
    assert settings.celery_worker_concurrency == 3
    assert settings.broker_url == "redis://from-dotenv:6379/0"
    assert settings.log_level == "ERROR"


def test_dotenv_bad_value_is_reported_like_any_other(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("REDIS_SOCKET_TIMEOUT=soon\n")
    result = run_check({"ENV_FILE": str(tmp_path / ".env")})
    assert result.returncode == 64
    assert "REDIS_SOCKET_TIMEOUT='soon' is not an integer" in result.stderr


def test_worker_args_split_options_like_a_shell() -> None:
    result = run_check({"CELERY_WORKER_OPTS": "--without-gossip -O 'fair'", "CELERY_WORKER_POOL": "threads",
                        "CELERY_WORKER_MAX_MEMORY_PER_CHILD": "200000", "CELERY_WORKER_HOSTNAME": "w1@%h"},
                       command="worker-args")
    assert result.returncode == 0, result.stderr
    argv = result.stdout.split("\0")[:-1]
    assert argv[:4] == ["celery", "-A", "worker.app", "worker"]
    assert argv[argv.index("--pool") + 1] == "threads"
    assert argv[argv.index("--max-memory-per-child") + 1] == "200000"
    assert argv[argv.index("--hostname") + 1] == "w1@%h"
    assert argv[-3:] == ["--without-gossip", "-O", "fair"]


def test_worker_args_unbalanced_quotes_is_an_error() -> None:
    result = run_check({"CELERY_WORKER_OPTS": "--hostname 'oops"}, command="worker-args")
    assert result.returncode == 64
    assert "CELERY_WORKER_OPTS" in result.stderr


@pytest.mark.parametrize(("url", "masked"), [
    ("redis://:pw@h:1/0", "redis://:***@h:1/0"),
    ("postgresql://user:p%40ss@db:5432/x", "postgresql://user:***@db:5432/x"),
    ("redis://h:1/0", "redis://h:1/0"),
    ("redis://user@h/0", "redis://user@h/0"),
    ("postgresql://app:Ab+c/d=@db/app", "postgresql://app:***@db/app"),
    ("redis://:p@ss@host:6379/0", "redis://:***@host:6379/0"),
    ("redis://:pa?ss#w/rd@host/0", "redis://:***@host/0"),
    ("not a url:secret@x", "(hidden)"),
    ("postgresql://worker@db/app?password=s3cret&sslmode=require", "postgresql://worker@db/app?password=***&sslmode=require"),
    ("postgresql://db/app?sslmode=require&PASSWORD=s3cret", "postgresql://db/app?sslmode=require&PASSWORD=***"),
])
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_readme_table_matches_declarations() -> None:
    from config.docs import BEGIN, END, env_table

    readme = (ROOT / "README.md").read_text()
    assert readme[readme.index(BEGIN):readme.index(END) + len(END)] == env_table()


def test_every_option_is_documented() -> None:
    for option in OPTIONS:
        assert option.help.strip(), option.name
        assert option.parser.allowed, option.name
        option.parse(option.default or "")  # every default is itself valid


def test_celery_command_with_a_bad_value_prints_one_line() -> None:
    clean = {k: v for k, v in os.environ.items() if k not in {o.name for o in OPTIONS}}
    result = subprocess.run([sys.executable, "-m", "celery", "-A", "worker.app", "worker"], cwd=ROOT,
                            env={**clean, **NO_ENV_FILE, "BROKER_URL": "http://u:Hidden1@h/0"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 64
    assert result.stderr.strip().splitlines() == [
        "configuration error: BROKER_URL='http://u:***@h/0' has an unknown URL scheme 'http'; "
        "allowed: a URL starting with redis:// or rediss://"]


def test_visibility_timeout_covers_the_retry_backoff() -> None:
    with pytest.raises(ConfigError, match=r"not above TASK_TIME_LIMIT \+ max\(TASK_MAX_COUNTDOWN, "
                                          r"TASK_RETRY_BACKOFF_MAX\) \(7600\)"):
        load_settings(environ={**NO_ENV_FILE, "TASK_RETRY_BACKOFF_MAX": "4000"})


def test_real_environment_file_variant_beats_dotenv_value(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("DATABASE_URL=postgresql://dotenv@db/x\n")
    secret = tmp_path / "db"
    secret.write_text("postgresql://fromfile@db/x")
    settings = load_settings(environ={"ENV_FILE": str(env_file), "DATABASE_URL_FILE": str(secret)})
    assert settings.database_url == "postgresql://fromfile@db/x"


def test_dotenv_file_variant(tmp_path: Path) -> None:
    secret = tmp_path / "broker"
    secret.write_text("redis://:x@r:6379/0")
    env_file = tmp_path / ".env"
    env_file.write_text(f"BROKER_URL_FILE={secret}\n")
    assert load_settings(environ={"ENV_FILE": str(env_file)}).broker_url == "redis://:x@r:6379/0"


def test_key_file_path_is_a_plain_path(tmp_path: Path) -> None:
    key = tmp_path / "client.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    cert = tmp_path / "client.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    settings = load_settings(environ={**NO_ENV_FILE, "REDIS_SSL_KEYFILE": str(key), "REDIS_SSL_CERTFILE": str(cert)})
    assert settings.redis_ssl_keyfile == str(key)
    result = run_check({"REDIS_SSL_KEYFILE": str(key)})
    assert result.returncode == 64 and "REDIS_SSL_CERTFILE and REDIS_SSL_KEYFILE must be set together" in result.stderr
