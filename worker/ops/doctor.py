"""``python -m worker doctor``: one line per check, ``ok``, ``failed`` (with the fix) or ``skipped`` (with why).

Every check runs even when an earlier one failed, except those that need what failed (no queue check without a
broker, no role check without a database). URLs are shown masked; messages of drivers name hosts, never passwords.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

OK, FAILED, SKIPPED = "ok", "failed", "skipped"
TIMEOUT = 3.0


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status:<7} {self.name}: {self.detail}"
        return f"{text} -- fix: {self.fix}" if self.fix else text

    def as_json(self) -> dict[str, str]:
        return {"check": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


def _one_line(exc: BaseException) -> str:
    from config import mask_url

    text = " ".join(str(getattr(exc, "orig", None) or exc).split()) or type(exc).__name__
    return mask_url(text) if "://" in text else text


def _redis_ping(url: str, ssl_options: dict | None) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=TIMEOUT, socket_timeout=TIMEOUT,
                                  **(ssl_options or {}))
    try:
        client.ping()
    finally:
        client.close()


def run_checks(queue_timeout: float = 2.0) -> list[Check]:
    from config import ConfigError, load_settings, mask_url

    checks: list[Check] = []
    try:
        settings = load_settings()
    except ConfigError as exc:
        return [Check("config", FAILED, str(exc), "correct the variable named (python -m worker check)")]
    checks.append(Check("config", OK, "every setting is valid"))

    from worker.celeryconfig import redis_endpoints

    endpoints = redis_endpoints(settings)
    reachable: dict[str, bool] = {}
    for name, variable in (("broker", "BROKER_URL"), ("result backend", "CELERY_RESULT_BACKEND")):
        endpoint = endpoints[name]
        check_name = name.replace(" ", "-")
        try:
            _redis_ping(endpoint.url, endpoint.ssl_options)
            checks.append(Check(check_name, OK, f"{mask_url(endpoint.url)} answers PING"))
            reachable[name] = True
        except Exception as exc:
            checks.append(Check(check_name, FAILED, f"{mask_url(endpoint.url)}: {_one_line(exc)}",
                                f"check {variable}, that Redis runs and is reachable, and its TLS settings"))
            reachable[name] = False
    for name, endpoint in endpoints.items():
        check_name = f"tls.{name.replace(' ', '-')}"
        if endpoint.ssl_options is None:
            checks.append(Check(check_name, OK, "plain redis:// (no TLS): fine on a private network only"))
        elif endpoint.verifies_certificate:
            ca = "REDIS_SSL_CA_CERTS" if endpoint.ssl_options.get("ssl_ca_certs") else "the system CA store"
            checks.append(Check(check_name, OK, f"rediss:// with certificate verification against {ca}"))
        else:
            checks.append(Check(check_name, FAILED, "rediss:// without certificate verification",
                                "set REDIS_SSL_CERT_REQS=required and REDIS_SSL_CA_CERTS to the server's CA"))
    checks += _database_checks(settings)
    checks += _queue_checks(settings, reachable.get("broker", False), queue_timeout)
    return checks


def _database_checks(settings: Any) -> list[Check]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    from config import mask_url
    from worker.db.engine import role_name, sqlalchemy_url
    from worker.db.migrate import check_runtime_role, runtime_rights_problems, table_row_security_problems
    from worker.db.models import RLS_TABLES

    checks: list[Check] = []
    runtime = role_name(settings.database_url) or ""
    engine = create_engine(sqlalchemy_url(settings.database_url), poolclass=NullPool,
                           connect_args={"connect_timeout": int(TIMEOUT)})
    try:
        with engine.connect() as connection:
            version = connection.execute(text("show server_version")).scalar()
            checks.append(Check("database", OK, f"{mask_url(settings.database_url)} as {runtime} "
                                                f"(PostgreSQL {version})"))
            owner = connection.execute(text(
                "select r.rolname from pg_class c join pg_namespace n on n.oid = c.relnamespace "
                "join pg_roles r on r.oid = c.relowner where n.nspname = 'public' and c.relname = 'organization'"
            )).scalar() or role_name(settings.migration_url) or ""
            problems: list[str] = []
            try:
                check_runtime_role(connection, runtime, owner)
            except Exception as exc:  # MigrationError: one problem, worded with its fix
                problems.append(str(exc))
            if runtime == owner:
                problems.append(f"runtime role {runtime} owns the tables and could switch row-level security off")
            else:
                problems += runtime_rights_problems(connection, runtime)
            checks.append(Check("runtime-role", FAILED, "; ".join(problems), "run `python -m worker migrate` "
                                "(it resets the grants) with DATABASE_URL naming a separate NOSUPERUSER "
                                "NOBYPASSRLS role") if problems else
                          Check("runtime-role", OK, f"{runtime}: no superuser, no BYPASSRLS, owns nothing, "
                                                    "exactly its table grants"))
            for table in RLS_TABLES:
                found = table_row_security_problems(connection, table)
                checks.append(Check(f"rls.{table}", FAILED, "; ".join(found),
                                    f"ALTER TABLE public.{table} ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL "
                                    "SECURITY as the owner, or run `python -m worker migrate`") if found else
                              Check(f"rls.{table}", OK, "ENABLE and FORCE row level security, tenant policy"))
            connection.rollback()
    except Exception as exc:
        if not checks:
            return [Check("database", FAILED, f"{mask_url(settings.database_url)}: {_one_line(exc)}",
                          "check DATABASE_URL and that PostgreSQL runs and is reachable"),
                    Check("runtime-role", SKIPPED, "no database"),
                    *(Check(f"rls.{table}", SKIPPED, "no database") for table in RLS_TABLES),
                    Check("migration", SKIPPED, "no database")]
        checks.append(Check("database.catalog", FAILED, _one_line(exc), "see the message"))
    finally:
        engine.dispose()
    checks.append(_migration_check(settings))
    return checks


def _migration_check(settings: Any) -> Check:
    from alembic.script import ScriptDirectory

    from worker.db.migrate import alembic_config, current_revision

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    try:
        current = current_revision(settings.migration_url)
    except Exception as exc:
        if not settings.migration_database_url:
            return Check("migration", SKIPPED, f"the runtime role cannot read alembic_version ({_one_line(exc)}); "
                                               f"head is {head}; set MIGRATION_DATABASE_URL to check it")
        return Check("migration", FAILED, _one_line(exc), "check MIGRATION_DATABASE_URL")
    if current == head:
        return Check("migration", OK, f"at head {head}")
    return Check("migration", FAILED, f"database at {current or 'nothing (unmigrated)'}, code at {head}",
                 "run `python -m worker migrate` (the chart's migration Job does it on install and upgrade)")


def _queue_checks(settings: Any, broker_up: bool, timeout: float) -> list[Check]:
    queues = settings.celery_worker_queues
    if not broker_up:
        return [Check(f"consumers.{queue}", SKIPPED, "no broker") for queue in queues]
    from worker.app import create_app

    app = create_app(settings, main="doctor")
    try:
        replies = app.control.inspect(timeout=timeout).active_queues() or {}
    finally:
        app.close()
    consumers: dict[str, list[str]] = {}
    for node, active in replies.items():
        for queue in active or []:
            consumers.setdefault(queue.get("name"), []).append(node)
    return [Check(f"consumers.{queue}", OK, f"consumed by {', '.join(sorted(consumers[queue]))}")
            if consumers.get(queue) else
            Check(f"consumers.{queue}", FAILED, f"no worker answered within {timeout:g}s consuming it",
                  "start a worker whose CELERY_WORKER_QUEUES includes it (kubectl get pods; its logs)")
            for queue in queues]


def doctor(emit: Callable[[Check], None], queue_timeout: float = 2.0) -> int:
    checks = run_checks(queue_timeout)
    for check in checks:
        emit(check)
    return 1 if any(check.status == FAILED for check in checks) else 0
