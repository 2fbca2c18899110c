"""Configuration: every bad value stops startup with one clear line; secrets via *_FILE; .env precedence."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from config import ConfigError, load_settings, mask_url
from config.options import OPTIONS, KiBOrAuto
from config.spec import Boolean, Choice, FilePath, Integer, Parser, Pattern, Text, Url, WordList

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


SECRET_URL_OPTIONS = [option for option in OPTIONS if option.secret and isinstance(option.parser, Url)]
# (url, how the error line must show it): a foreign scheme, a password holding "/" or "@" (which trip naive
# maskers) in the option's own scheme, and a password in the query string. Each URL is also invalid.
LEAKY_URLS = [
    ("ftp://admin:TopSecret99@example.invalid:21/x", "ftp://admin:***@example.invalid:21/x"),
    ("{scheme}://admin:Top/Secret99@host:6379/0", "{scheme}://admin:***@host:6379/0"),
    ("{scheme}://admin:Top@Secret99@db:notaport/x", "{scheme}://admin:***@db:notaport/x"),
    ("{scheme}://admin@db:notaport/x?password=TopSecret99&a=b", "{scheme}://admin@db:notaport/x?password=***&a=b"),
]


@pytest.mark.parametrize("option", SECRET_URL_OPTIONS, ids=[o.name for o in SECRET_URL_OPTIONS])
@pytest.mark.parametrize(("url", "masked"), LEAKY_URLS, ids=["foreign-scheme", "slash", "at-sign", "query"])
def test_passwords_never_appear_in_errors(option, url: str, masked: str) -> None:
    scheme = option.parser.schemes[0]
    result = run_check({option.name: url.format(scheme=scheme)})
    assert result.returncode == 64, result.stderr
    assert "Secret99" not in result.stderr + result.stdout
    assert f"{option.name}='{masked.format(scheme=scheme)}' " in result.stderr


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


# A value each kind of parser refuses. A new kind of parser fails the test below until it is listed here.
REFUSED_BY = {
    Integer: "twelve",
    KiBOrAuto: "twelve",
    Boolean: "perhaps",
    Choice: "no-such-choice",
    Url: "ftp://h/x",
    FilePath: "/nonexistent/file.pem",
    Pattern: "two words/!",
    WordList: " , ",
}
# Free text has no value to refuse; CELERY_WORKER_OPTS is checked when split (see the worker-args tests).
FREE_TEXT = {"CELERY_WORKER_OPTS", "WORKER_HEALTH_DIR", "FLOWER_BASIC_AUTH"}


def test_every_option_is_documented() -> None:
    for option in OPTIONS:
        assert option.help.strip(), option.name
        assert option.parser.allowed.strip() and option.parser.allowed != Parser.allowed, option.name
        option.parse(option.default or "")  # every default is itself valid
    assert {o.name for o in OPTIONS if type(o.parser) is Text} == FREE_TEXT


@pytest.mark.parametrize("option", [o for o in OPTIONS if o.name not in FREE_TEXT], ids=lambda o: o.name)
def test_every_option_refuses_a_bad_value_with_its_allowed_text(option) -> None:
    assert type(option.parser) in REFUSED_BY, f"no bad value known for {type(option.parser).__name__}"
    bad = REFUSED_BY[type(option.parser)]
    result = run_check({option.name: bad})
    assert result.returncode == 64, (bad, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"configuration error: {option.name}=")
    assert lines[0].endswith(f"; allowed: {option.parser.allowed}")


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
