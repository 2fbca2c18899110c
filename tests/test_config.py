"""Configuration: every bad value stops startup with one clear line; secrets via *_FILE; .env precedence."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from config import ConfigError, load_settings, mask_url
from config.options import OPTIONS, FernetKeys, KiBOrAuto, SigningKeys, TokenSecrets
from config.spec import (
    Boolean,
    Choice,
    Credentials,
    DirectoryPath,
    FilePath,
    Integer,
    Parser,
    Pattern,
    Text,
    Url,
    WordList,
)

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
    ("ENABLE_FLOWER", "perhaps", "is not a yes/no word"),
    ("FLOWER_UNAUTHENTICATED", "perhaps", "is not a yes/no word"),
    ("FLOWER_BASIC_AUTH", "admin", "entry 1 is not user:password"),
    ("FLOWER_BASIC_AUTH", "admin:pw,guest", "entry 2 is not user:password"),
    ("FLOWER_BASIC_AUTH", "admin:pw,", "entry 2 is not user:password"),
    ("FLOWER_BASIC_AUTH", ":pw", "entry 1 is not user:password"),
    ("FLOWER_BASIC_AUTH", "admin:", "entry 1 is not user:password"),
    ("FLOWER_BASIC_AUTH", "ad min:pw", "entry 1 has whitespace in its user name"),
    ("FLOWER_BASIC_AUTH", "admin:pw\nroot:pw", "contains a newline or another control character"),
    ("CELERY_WORKER_HOSTNAME", "bad name/with spaces", "has characters that are not allowed"),
    ("REDIS_KEY_PREFIX", "tenant worker", "has characters that are not allowed"),
    ("FLOWER_PORT", "70000", "is above the maximum"),
    ("WORKER_HEARTBEAT_MAX_AGE", "2", "is not above WORKER_HEARTBEAT_INTERVAL"),
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
    DirectoryPath: "relative/directory",
    Pattern: "two words/!",
    WordList: " , ",
    Credentials: "user-without-password",
    SigningKeys: "short-key",
    TokenSecrets: "change-me-" + "0" * 32,
    FernetKeys: "not-a-fernet-key",
}
# Free text has no value to refuse; CELERY_WORKER_OPTS is checked when split and parsed as celery's options
# (tests/test_config_every_variable.py).
FREE_TEXT = {"CELERY_WORKER_OPTS"}


@pytest.mark.parametrize(("value", "reason"), [
    ("change-me-" + "0" * 32, "key 1 is not a random key"),
    ("replace_this_secret_" + "1" * 20, "key 1 is not a random key"),
    ("ab" * 32, "key 1 is not a random key"),  # too few distinct characters (not "a" * 64: a test digest)
    ("0123456789abcdef" * 2 + "," + "z" * 10, "key 2 is shorter than 32 characters"),
])
def test_api_token_secret_refuses_placeholders_and_short_keys(value: str, reason: str) -> None:
    result = run_check({"API_TOKEN_SECRET": value})
    assert result.returncode == 64 and f"API_TOKEN_SECRET=(hidden) {reason};" in result.stderr, result.stderr
    assert value not in result.stderr


def test_api_token_secret_takes_random_keys_for_rotation() -> None:
    keys = ("9f2c1d7e4b8a6f3e0d5c2b9a8e7f6d5c", "Qm3x-Vt7_Lp2Zr9Kw4Hs8Jd6Fb1Ng5Yc")
    settings = load_settings(environ={**NO_ENV_FILE, "API_TOKEN_SECRET": ",".join(keys)}, scopes=("api",))
    assert settings.api_token_secret == keys


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
    if option.secret:  # the leak check registers it as a secret: other variables' errors quote the plain value
        bad = f"{bad}-{option.name}"
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


def test_settings_class_is_generated_from_the_options() -> None:
    from config.codegen import TARGET, render

    assert TARGET.read_text() == render(), "config/settings.py is stale: run `python -m config.codegen`"


def test_settings_are_typed_frozen_attributes() -> None:
    from dataclasses import FrozenInstanceError, fields

    from config import Settings

    assert [f.name for f in fields(Settings)] == [o.name.lower() for o in OPTIONS]
    settings = load_settings(environ=NO_ENV_FILE)
    assert settings.broker_url == "redis://localhost:6379/0" and settings.task_max_retries == 3
    with pytest.raises(AttributeError, match="no setting 'brokr_url'"):
        settings.brokr_url  # noqa: B018 - a misspelt setting
    with pytest.raises(FrozenInstanceError):
        settings.broker_url = "redis://elsewhere/0"  # type: ignore[misc]
    with pytest.raises(TypeError):
        settings["BROKER_URL"]  # type: ignore[index] - one way in: attributes
    assert "localhost" not in repr(settings)  # the repr names settings, never values (passwords)


def test_a_scoped_load_leaves_other_scopes_unread() -> None:
    settings = load_settings(environ={**NO_ENV_FILE, "CELERY_WORKER_CONCURRENCY": "abc"}, scopes=("app",))
    assert settings.task_time_limit == 3600
    with pytest.raises(AttributeError, match="CELERY_WORKER_CONCURRENCY was not loaded"):
        settings.celery_worker_concurrency  # noqa: B018
    assert {o.scope for o in OPTIONS if o.name.startswith(("BROKER_", "REDIS_", "DATABASE_", "TASK_"))} == {"app"}


def test_producer_import_ignores_worker_only_variables() -> None:
    clean = {k: v for k, v in os.environ.items() if k not in {o.name for o in OPTIONS}}
    for variable, value in (("CELERY_WORKER_CONCURRENCY", "abc"), ("WORKER_HEARTBEAT_INTERVAL", "abc"),
                            ("FLOWER_PORT", "abc"), ("ENABLE_FLOWER", "perhaps")):
        env = {**clean, **NO_ENV_FILE, variable: value}
        imported = subprocess.run([sys.executable, "-c", "import worker.app; print(worker.app.app.main)"], cwd=ROOT,
                                  env=env, capture_output=True, text=True, timeout=60)
        assert (imported.returncode, imported.stdout) == (0, "worker\n"), (variable, imported.stderr)
        checked = run_check({variable: value})
        assert checked.returncode == 64 and checked.stdout == ""
        assert len(checked.stderr.strip().splitlines()) == 1 and f"{variable}=" in checked.stderr


YES_NO = ["REDIS_RETRY_ON_TIMEOUT", "REDIS_SOCKET_KEEPALIVE", "TASK_ACKS_LATE", "CELERY_WORKER_MINGLE", "ENABLE_FLOWER",
          "FLOWER_UNAUTHENTICATED", "EXECUTION_ALLOW_PRIVATE_TARGETS"]
YES_WORDS, NO_WORDS = ("yes", "true", "1", "on", "YES", " On "), ("no", "false", "0", "off", "")


def test_yes_no_variables_are_listed() -> None:
    assert sorted(o.name for o in OPTIONS if isinstance(o.parser, Boolean)) == sorted(YES_NO)


@pytest.mark.parametrize("name", YES_NO)
def test_every_yes_no_variable_takes_the_same_words(name: str) -> None:
    for words, expected in ((YES_WORDS, True), (NO_WORDS, False)):
        for word in words:
            value = getattr(load_settings(environ={**NO_ENV_FILE, name: word}, only=(name,)), name.lower())
            assert value is expected, (name, word)


@pytest.mark.parametrize(("value", "printed"), [("on", "yes"), ("true", "yes"), ("0", "no"), ("", "no")])
def test_check_prints_yes_no_words(value: str, printed: str) -> None:
    # entrypoint.sh compares ${CFG[ENABLE_FLOWER]} and ${CFG[FLOWER_UNAUTHENTICATED]} with `yes`.
    result = run_check({"ENABLE_FLOWER": value, "FLOWER_UNAUTHENTICATED": value, "TASK_ACKS_LATE": value})
    assert result.returncode == 0, result.stderr
    for name in ("ENABLE_FLOWER", "FLOWER_UNAUTHENTICATED", "TASK_ACKS_LATE"):
        assert f"\n{name}={printed}\n" in result.stdout


@pytest.mark.parametrize("value", ["admin:s3cret", "admin:pa:ss word,ops:x", "  admin:pw  "])
def test_flower_basic_auth_takes_user_password_pairs(value: str) -> None:
    settings = load_settings(environ={**NO_ENV_FILE, "FLOWER_BASIC_AUTH": value}, only=("FLOWER_BASIC_AUTH",))
    assert settings.flower_basic_auth == value.strip()


def test_flower_basic_auth_errors_hide_the_value() -> None:
    result = run_check({"FLOWER_BASIC_AUTH": "admin Secret99"})
    assert result.returncode == 64 and "Secret99" not in result.stderr
    assert "FLOWER_BASIC_AUTH=(hidden) entry 1 is not user:password" in result.stderr


def test_bare_celery_worker_still_validates_worker_only_variables() -> None:
    # Importing worker.app validates the app scope only; a `celery worker` started without the launcher is
    # checked in full before its bootsteps read the health settings.
    clean = {k: v for k, v in os.environ.items() if k not in {o.name for o in OPTIONS}}
    result = subprocess.run([sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--pool", "solo"], cwd=ROOT,
                            env={**clean, **NO_ENV_FILE, "WORKER_HEARTBEAT_INTERVAL": "abc"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 64, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "configuration error: WORKER_HEARTBEAT_INTERVAL='abc' is not an integer; allowed: an integer >= 1, <= 3600")


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


@pytest.mark.parametrize(("value", "reason"), [
    ("{good},{bad}", "key 2 is not a Fernet key"),
    ("{good},", "key 2 is empty"),
    ("{good},{good}", "names the same key twice"),
])
def test_bad_db_encryption_key_is_one_line_without_the_keys(value: str, reason: str, tmp_path) -> None:
    good, bad = _fernet_key(), _fernet_key()[:-4] + "!!!="
    raw = value.format(good=good, bad=bad)
    for env in ({"DB_ENCRYPTION_KEY": raw}, {"DB_ENCRYPTION_KEY_FILE": str(tmp_path / "key")}):
        (tmp_path / "key").write_text(raw + "\n")
        result = run_check(env)
        assert result.returncode == 64, result.stderr
        [line] = result.stderr.strip().splitlines()
        assert line.startswith("configuration error: DB_ENCRYPTION_KEY=(hidden) " + reason), line
        assert good not in result.stderr and bad not in result.stderr and good[:20] not in result.stderr


def test_db_encryption_key_parses_rotation_lists(tmp_path) -> None:
    first, second = _fernet_key(), _fernet_key()
    (tmp_path / "key").write_text(f" {first} , {second}\n")
    settings = load_settings(environ={**NO_ENV_FILE, "DB_ENCRYPTION_KEY_FILE": str(tmp_path / "key")},
                             only=("DB_ENCRYPTION_KEY",))
    assert settings.db_encryption_key == (first, second)
    assert load_settings(environ=NO_ENV_FILE, only=("DB_ENCRYPTION_KEY",)).db_encryption_key == ()
