"""The on-call commands (``python -m worker doctor|queues|stuck|revoke|purge|inspect``) against real Redis,
PostgreSQL and worker processes, run as an operator runs them: a subprocess reading the environment."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.conftest import ROOT, WorkerProcess, register_database
from worker.db.models import RLS_TABLES
from worker.dev.provision import ProvisionedDatabase, drop_database, provision_database
from worker.dev.services import free_port

SEP = "\x06\x16"


def run_cli(env: dict[str, str], *args: str, stdin: str = "", path_first: str | None = None,
            command: tuple[str, ...] = (sys.executable, "-m", "worker")) -> tuple[int, str]:
    from config.options import OPTIONS

    declared = {option.name for option in OPTIONS}
    base = {k: v for k, v in os.environ.items() if k not in declared and not k.startswith("CELERY_")}
    if path_first:
        base["PATH"] = f"{path_first}{os.pathsep}{base.get('PATH', '')}"
    done = subprocess.run([*command, *args], cwd=ROOT, env={**base, **env, "PYTHONPATH": str(ROOT)},
                          input=stdin, capture_output=True, text=True, timeout=120, check=False)
    return done.returncode, done.stdout + done.stderr


def statuses(output: str) -> dict[str, str]:
    """``{check: status}`` from doctor's lines (``ok      name: detail``)."""
    found = {}
    for line in output.splitlines():
        status, _, rest = line.partition(" ")
        if status in ("ok", "failed", "skipped"):
            found[rest.strip().split(":", 1)[0]] = status
    return found


def wait_for(predicate, timeout: float = 30, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"{what} did not happen in {timeout}s")


@pytest.fixture(scope="module")
def prefork_worker(worker_factory) -> WorkerProcess:  # type: ignore[no-untyped-def]
    return worker_factory(pool="prefork", concurrency=2)


@pytest.fixture()
def scratch_database(pg_admin_url: str) -> Iterator[ProvisionedDatabase]:
    from worker.db.migrate import migrate

    db = provision_database(pg_admin_url, prefix="twops")
    register_database(db)
    migrate(db.owner_url, db.runtime_url)
    yield db
    drop_database(pg_admin_url, db)


def active_on(client_app, task_id: str) -> bool:  # type: ignore[no-untyped-def]
    answers = client_app.control.inspect(timeout=1).active() or {}
    return any(task["id"] == task_id for tasks in answers.values() for task in tasks)


# -- doctor ----------------------------------------------------------------------------------------------------

def test_doctor_passes_every_check_of_a_healthy_deployment_and_shows_no_secret(session_env, prefork_worker,
                                                                               migrated_database) -> None:
    status, output = run_cli(session_env, "doctor", "--timeout", "3")
    found = statuses(output)
    assert status == 0, output
    assert set(found.values()) == {"ok"}, output
    assert {f"rls.{table}" for table in RLS_TABLES} <= found.keys(), output
    for name in ("config", "broker", "result-backend", "tls.broker", "database", "runtime-role", "migration",
                 "consumers.celery", "consumers.execution"):
        assert found.get(name) == "ok", output
    for url in (migrated_database.runtime_url, migrated_database.owner_url):
        password = make_url(url).password
        assert password and password not in output


def test_doctor_fails_exactly_the_rls_check_of_a_table_without_force(session_env, prefork_worker,
                                                                     scratch_database) -> None:
    owner = create_engine(scratch_database.owner_url)
    with owner.begin() as connection:
        connection.execute(text("ALTER TABLE public.test_run NO FORCE ROW LEVEL SECURITY"))
    owner.dispose()
    env = {**session_env, "DATABASE_URL": scratch_database.runtime_url,
           "MIGRATION_DATABASE_URL": scratch_database.owner_url}
    status, output = run_cli(env, "doctor", "--timeout", "3")
    assert status == 1, output
    assert {name for name, state in statuses(output).items() if state != "ok"} == {"rls.test_run"}, output
    assert "FORCE ROW LEVEL SECURITY" in next(line for line in output.splitlines() if "rls.test_run" in line)


def test_doctor_fails_exactly_the_role_check_or_the_migration_check(session_env, prefork_worker, pg_admin_url,
                                                                     scratch_database) -> None:
    env = {**session_env, "DATABASE_URL": scratch_database.runtime_url,
           "MIGRATION_DATABASE_URL": scratch_database.owner_url}
    runtime = make_url(scratch_database.runtime_url).username
    admin = create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'ALTER ROLE "{runtime}" BYPASSRLS'))
        status, output = run_cli(env, "doctor", "--timeout", "3")
        assert status == 1, output
        assert {name for name, state in statuses(output).items() if state != "ok"} == {"runtime-role"}, output
        assert "BYPASSRLS" in output, output
        with admin.connect() as connection:
            connection.execute(text(f'ALTER ROLE "{runtime}" NOBYPASSRLS'))
    finally:
        admin.dispose()

    from alembic.script import ScriptDirectory

    from worker.db.migrate import alembic_config

    script = ScriptDirectory.from_config(alembic_config())
    head = script.get_current_head()
    previous = script.get_revision(head).down_revision
    owner = create_engine(scratch_database.owner_url)
    with owner.begin() as connection:  # as if the code were upgraded and migrate not run yet
        connection.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": previous})
    owner.dispose()
    status, output = run_cli(env, "doctor", "--timeout", "3")
    assert status == 1, output
    assert {name for name, state in statuses(output).items() if state != "ok"} == {"migration"}, output
    assert f"database at {previous}, code at {head}" in output, output


def test_doctor_fails_exactly_the_broker_check_with_a_wrong_broker_url(session_env, prefork_worker) -> None:
    env = {**session_env, "BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}
    status, output = run_cli(env, "doctor", "--timeout", "3")
    found = statuses(output)
    assert status == 1, output
    assert {name for name, state in found.items() if state == "failed"} == {"broker"}, output
    assert found["consumers.celery"] == "skipped", output


def test_doctor_json_says_what_the_lines_say(session_env, prefork_worker) -> None:
    import json

    status, output = run_cli({**session_env, "BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}, "doctor",
                             "--json", "--timeout", "3")
    report = json.loads(output)
    assert status == 1 and report["ok"] is False
    assert [c["check"] for c in report["checks"] if c["status"] == "failed"] == ["broker"]


def test_doctor_fails_tls_without_verification_and_a_broker_with_a_foreign_ca(session_env, run_dir,
                                                                              tmp_path) -> None:
    from tests.support.tls import make_pki, start_tls_redis_or_skip

    pki = make_pki(tmp_path / "pki")
    url, proc = start_tls_redis_or_skip(run_dir, pki)
    try:
        env = {**session_env, "BROKER_URL": f"{url}/0", "REDIS_SSL_CA_CERTS": str(pki.ca_cert)}
        found = statuses(run_cli(env, "doctor", "--timeout", "3")[1])
        assert (found["broker"], found["tls.broker"]) == ("ok", "ok"), found

        status, output = run_cli({**env, "REDIS_SSL_CERT_REQS": "none"}, "doctor", "--timeout", "3")
        found = statuses(output)
        assert status == 1 and (found["broker"], found["tls.broker"]) == ("ok", "failed"), output
        assert found["tls.result-backend"] == "ok", output  # plain redis://: nothing to verify

        foreign = {**env, "REDIS_SSL_CA_CERTS": str(pki.other_ca_cert)}
        status, output = run_cli(foreign, "doctor", "--timeout", "3")
        found = statuses(output)
        assert status == 1 and (found["broker"], found["tls.broker"]) == ("failed", "ok"), output
        assert "certificate verify failed" in output, output
    finally:
        proc.terminate()
        proc.wait(10)


# -- queues and purge ------------------------------------------------------------------------------------------

def test_queues_counts_priority_sub_queues_and_the_messages_workers_hold(session_env, client_app, broker,
                                                                          prefork_worker) -> None:
    queue = f"ops-{secrets.token_hex(3)}"
    for priority in (0, 0, 9):
        client_app.send_task("tests.probe.tenant", queue=queue, priority=priority,
                             headers={"organization_id": str(uuid.uuid4()), "user_id": str(uuid.uuid4())})
    held = client_app.send_task("tests.probe.sleep", args=[30],
                                headers={"organization_id": str(uuid.uuid4()), "user_id": str(uuid.uuid4())})
    wait_for(lambda: active_on(client_app, held.id), what="the sleep task starting")
    status, output = run_cli(session_env, "queues")
    assert status == 0, output
    line = next(line for line in output.splitlines() if line.startswith(f"queue={queue} "))
    assert "waiting=3 priority0=2 priority3=0 priority6=0 priority9=1 unacked=0" in line, output
    assert "oldest_waiting=unknown" in line, output
    celery_line = next(line for line in output.splitlines() if line.startswith("queue=celery "))
    assert "unacked=0" not in celery_line and "oldest_unacked=-" not in celery_line, output
    client_app.control.revoke(held.id, terminate=True)


def test_purge_asks_and_deletes_only_when_told_yes(session_env, client_app, broker) -> None:
    queue = f"ops-{secrets.token_hex(3)}"
    prefix = session_env["REDIS_KEY_PREFIX"]
    for priority in (0, 9):
        client_app.send_task("tests.probe.tenant", queue=queue, priority=priority,
                             headers={"organization_id": str(uuid.uuid4()), "user_id": str(uuid.uuid4())})
    keys = (f"{prefix}{queue}", f"{prefix}{queue}{SEP}9")
    assert [broker.llen(key) for key in keys] == [1, 1]

    status, output = run_cli(session_env, "purge", queue, stdin="n\n")
    assert status == 1 and "nothing deleted" in output, output
    assert [broker.llen(key) for key in keys] == [1, 1]

    status, output = run_cli(session_env, "purge", queue, stdin="y\n")
    assert status == 0 and f"purged queue={queue} messages=2" in output, output
    assert [broker.llen(key) for key in keys] == [0, 0]


# -- inspect, stuck ----------------------------------------------------------------------------------------------

def test_inspect_shows_each_active_task_with_its_tenant(session_env, client_app, prefork_worker) -> None:
    org, user = str(uuid.uuid4()), str(uuid.uuid4())
    result = client_app.send_task("tests.probe.sleep", args=[30], headers={"organization_id": org, "user_id": user})
    wait_for(lambda: active_on(client_app, result.id), what="the sleep task starting")
    status, output = run_cli(session_env, "inspect")
    assert status == 0, output
    assert f"worker={prefork_worker.node} pool=prefork" in output, output
    line = next(line for line in output.splitlines() if result.id in line)
    assert line.strip().startswith("active ") and f"organization_id={org} user_id={user}" in line, output
    client_app.control.revoke(result.id, terminate=True)


def test_stuck_finds_a_dead_workers_started_task_and_a_pending_chord_unlock_and_fix_asks(session_env,
                                                                                        client_app) -> None:
    from celery import states

    dead = str(uuid.uuid4())
    # What a SIGKILLed worker leaves behind: the STARTED state, written as its worker writes it.
    client_app.backend.store_result(dead, {"pid": 1, "hostname": "gone@nowhere"}, states.STARTED)
    queue = f"ops-{secrets.token_hex(3)}"
    unlock = client_app.send_task("celery.chord_unlock", args=[str(uuid.uuid4()), None], queue=queue,
                                  headers={"organization_id": str(uuid.uuid4()), "user_id": str(uuid.uuid4())})
    env = {**session_env, "CELERY_WORKER_QUEUES": f"celery,execution,{queue}"}

    status, output = run_cli(env, "stuck", "--older-than", "0")
    assert status == 0, output
    assert f"task id={dead} " in output and "worker_running_it=no" in output, output
    assert f"chord_unlock id={unlock.id} where=waiting:{queue}" in output, output

    status, output = run_cli(env, "stuck", "--older-than", "0", "--fix", stdin="n\n")
    assert status == 1 and "nothing changed" in output, output
    assert client_app.backend.get_task_meta(dead)["status"] == states.STARTED

    status, output = run_cli(env, "stuck", "--older-than", "0", "--fix", "--yes")
    assert status == 0 and f"fixed task id={dead} revoked marked REVOKED" in output, output
    client_app.backend._cache.pop(dead, None)
    assert client_app.backend.get_task_meta(dead)["status"] == states.REVOKED


def test_stuck_leaves_a_started_task_younger_than_the_threshold(session_env, client_app) -> None:
    from celery import states

    young = str(uuid.uuid4())
    client_app.backend.store_result(young, {"pid": 1, "hostname": "gone@nowhere"}, states.STARTED)
    status, output = run_cli(session_env, "stuck", "--older-than", "3000")
    assert status == 0 and young not in output, output


def test_stuck_lists_a_stalled_run_and_fix_settles_it_like_the_sweeper(session_env, migrated_database) -> None:
    from datetime import UTC, datetime

    from tests.support.execution_data import ExecutionData
    from worker.db.models import TestRun
    from worker.db.session import tenant_session

    data = ExecutionData(migrated_database.owner_url)
    try:
        configuration = data.configuration("http://127.0.0.1:9/chat", 2)
        org, run_id = configuration.organization_id, str(uuid.uuid4())
        # A run cancelled while its worker vanished: nothing will ever close it but the sweeper.
        with tenant_session(org, configuration.user_id, engine=data.engine) as db:
            db.add(TestRun(id=uuid.UUID(run_id), organization_id=uuid.UUID(org), status="running",
                           test_configuration_id=uuid.UUID(configuration.configuration_id),
                           cancel_requested_at=datetime.now(UTC)))
        args = ("stuck", "--older-than", "999999", "--stall-seconds", "0")
        status, output = run_cli(session_env, *args)
        assert status == 0 and f"run id={run_id} organization_id={org}" in output, output
        assert data.run(org, run_id).status == "running"

        status, output = run_cli(session_env, *args, "--fix", "--yes")
        assert status == 0 and f"fixed run id={run_id} closed status=cancelled" in output, output
        assert data.run(org, run_id).status == "cancelled"
    finally:
        data.close()


# -- revoke, and the image's entrypoint --------------------------------------------------------------------------

def test_revoke_terminate_stops_a_task_in_prefork(session_env, client_app, prefork_worker) -> None:
    result = client_app.send_task("tests.probe.sleep", args=[60],
                                  headers={"organization_id": str(uuid.uuid4()), "user_id": str(uuid.uuid4())})
    wait_for(lambda: active_on(client_app, result.id), what="the sleep task starting")
    status, output = run_cli(session_env, "revoke", result.id, "--terminate")
    assert status == 0 and f"terminated id={result.id} worker={prefork_worker.node} pool=prefork" in output, output
    wait_for(lambda: result.state == "REVOKED", what="the task ending revoked")


def test_entrypoint_runs_the_ops_commands(session_env, prefork_worker) -> None:
    status, output = run_cli(session_env, "queues", command=("bash", str(ROOT / "entrypoint.sh")),
                             path_first=str(Path(sys.executable).parent))
    assert status == 0 and "queue=celery " in output, output


def test_revoke_terminate_says_plainly_that_the_threads_pool_cannot(session_env, client_app, worker_factory,
                                                                   prefork_worker) -> None:
    prefork_worker.stop()  # the task must land on the threads worker (last test of the module)
    threads = worker_factory(pool="threads", concurrency=2)
    result = client_app.send_task("tests.probe.sleep", args=[8],
                                  headers={"organization_id": str(uuid.uuid4()), "user_id": str(uuid.uuid4())})
    wait_for(lambda: active_on(client_app, result.id), what="the sleep task starting")
    status, output = run_cli(session_env, "revoke", result.id, "--terminate")
    assert status == 2, output
    assert f"cannot terminate id={result.id} worker={threads.node} pool=threads" in output, output
    # It runs to its end: its SUCCESS replaces the REVOKED that every revoke writes at once.
    wait_for(lambda: client_app.backend._get_task_meta_for(result.id)["status"] == "SUCCESS", timeout=60,
             what="the task finishing")


def test_commands_answer_in_one_line_when_the_broker_is_down(session_env) -> None:
    env = {**session_env, "BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}
    for args in (("queues",), ("inspect",), ("purge", "celery", "--yes")):
        status, output = run_cli(env, *args)
        assert status == 1 and output.strip() == output.strip().splitlines()[0], output
        assert output.startswith(f"{args[0]}: broker unavailable: "), output
