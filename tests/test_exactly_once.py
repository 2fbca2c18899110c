"""Exactly-once database effects (worker/db/once.py) with a real worker: a message delivered twice, and a task
killed after committing its effect but before its acknowledgement, each leave one row."""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Iterator

import psutil
import pytest
import redis
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.pool import NullPool

from tests.conftest import start_worker_process
from worker.db.models import Organization, TaskEffect, TestSet
from worker.db.session import tenant_session

pytestmark = pytest.mark.timeout(180)

APP = "tests.support.delivery_worker_app"


@pytest.fixture
def org(migrated_database) -> Iterator[str]:  # type: ignore[no-untyped-def]
    org_id = uuid.uuid4()
    engine = create_engine(migrated_database.owner_url, poolclass=NullPool)
    with tenant_session(org_id, engine=engine) as db:
        db.add(Organization(id=org_id, name="exactly-once"))
    yield str(org_id)
    with tenant_session(org_id, engine=engine) as db:
        db.execute(Organization.__table__.delete())
    engine.dispose()


def _rows(db_url: str, org: str, name: str, task_id: str) -> tuple[int, int]:
    """(test sets named ``name``, task_effect markers of ``task_id``), counted as the owner under ``org``."""
    engine = create_engine(db_url, poolclass=NullPool)
    with tenant_session(org, engine=engine) as db:
        sets = db.scalar(select(func.count()).select_from(TestSet).where(TestSet.name == name))
        markers = db.scalar(select(func.count()).select_from(TaskEffect).where(TaskEffect.task_id == task_id))
    engine.dispose()
    return sets, markers


def _wait_until_drained(client: redis.Redis, prefix: str, timeout: float = 60) -> None:
    """The queue is empty and nothing is unacknowledged: every delivery has run and been acknowledged."""
    deadline = time.monotonic() + timeout
    while client.llen(prefix + "celery") or client.hlen(prefix + "unacked"):
        assert time.monotonic() < deadline, "the worker did not finish both deliveries"
        time.sleep(0.1)


def test_the_same_message_delivered_twice_writes_once(session_env, run_dir, client_app, migrated_database,
                                                      org) -> None:
    worker = start_worker_process(session_env, run_dir, "prefork", 2, app=APP, ping_app=client_app)
    client = redis.Redis.from_url(session_env["BROKER_URL"])
    name, task_id = f"once-{secrets.token_hex(4)}", str(uuid.uuid4())
    try:
        for _ in range(2):
            client_app.send_task("rhesis.backend.tasks.create_test_set", kwargs={"name": name}, task_id=task_id,
                                 headers={"organization_id": org})
        _wait_until_drained(client, session_env["REDIS_KEY_PREFIX"])
        log = worker.log()
    finally:
        worker.stop()
        client.close()
    assert _rows(migrated_database.owner_url, org, name, task_id) == (1, 1)
    assert f"create_test_set[{task_id}] was delivered again after its effect committed" in log


def test_a_task_killed_after_its_commit_is_redelivered_and_writes_once(session_env, run_dir, client_app,
                                                                        migrated_database, org) -> None:
    worker = start_worker_process(session_env, run_dir, "prefork", 1, app=APP, ping_app=client_app)
    counter_url = session_env["BROKER_URL"]
    counter_key = f"{session_env['REDIS_KEY_PREFIX']}once-test:{secrets.token_hex(4)}"
    client = redis.Redis.from_url(counter_url)
    name, task_id = f"killed-{secrets.token_hex(4)}", str(uuid.uuid4())
    try:
        client_app.send_task("tests.delivery.write_then_linger", args=(name, counter_url, counter_key, 60),
                             task_id=task_id, headers={"organization_id": org})
        deadline = time.monotonic() + 60
        while not client.hget(counter_key, "applied"):
            assert time.monotonic() < deadline, "the task never committed its effect"
            time.sleep(0.05)
        # The effect is committed and the task lingers, unacknowledged (late acks): kill the pool child.
        children = psutil.Process(worker.proc.pid).children()
        assert len(children) == 1, children
        children[0].kill()
        deadline = time.monotonic() + 60
        while not client.hget(counter_key, "skipped") and int(client.hget(counter_key, "applied") or 0) < 2:
            assert time.monotonic() < deadline, f"the task was not delivered again:\n{worker.log()[-3000:]}"
            time.sleep(0.1)
        counts = {key.decode(): int(value) for key, value in client.hgetall(counter_key).items()}
    finally:
        worker.stop()
        client.delete(counter_key)
        client.close()
    assert counts == {"applied": 1, "skipped": 1}
    assert _rows(migrated_database.owner_url, org, name, task_id) == (1, 1)


def test_run_once_refuses_a_session_without_tenant_and_rolls_back_with_the_effect(migrated_database, org) -> None:
    from sqlalchemy.orm import Session

    from worker.db.once import run_once
    from worker.errors import TenantContextError

    engine = create_engine(migrated_database.runtime_url, poolclass=NullPool)
    with Session(engine) as bare, pytest.raises(TenantContextError):
        run_once(bare, "some-task")
    task_id = str(uuid.uuid4())
    with pytest.raises(RuntimeError), tenant_session(org, engine=engine) as db:
        assert run_once(db, task_id)
        raise RuntimeError("the effect failed")
    # The marker went with the rolled-back transaction: the next delivery applies the effect.
    with tenant_session(org, engine=engine) as db:
        assert run_once(db, task_id)
        assert not run_once(db, task_id)
        assert db.scalar(text("select count(*) from task_effect where task_id = :t"), {"t": task_id}) == 1
    engine.dispose()
