"""CELERY_WORKER_MINGLE: the default start skips Celery's mingle step (about 1 s of every start), so a worker started
after a `revoke` does not learn it from the running workers; `yes` keeps Celery's behaviour."""

from __future__ import annotations

import uuid

import pytest

from config import load_settings
from worker.launch.command import worker_launch


def argv_with(**values: str) -> list[str]:
    return worker_launch(load_settings(environ=values, env_file="/nonexistent")).argv


@pytest.mark.parametrize(("values", "count"), [
    ({}, 1),
    ({"CELERY_WORKER_MINGLE": "no"}, 1),
    ({"CELERY_WORKER_MINGLE": "yes"}, 0),
    # set in CELERY_WORKER_OPTS before the option existed: passed once, not twice
    ({"CELERY_WORKER_OPTS": "--without-gossip --without-mingle"}, 1),
    ({"CELERY_WORKER_MINGLE": "yes", "CELERY_WORKER_OPTS": "--without-mingle"}, 1),
])
def test_without_mingle_is_in_the_argv_unless_mingle_is_on(values: dict[str, str], count: int) -> None:
    assert argv_with(**values).count("--without-mingle") == count


def revoked_on(entry) -> list[str]:  # type: ignore[no-untyped-def]
    replies = entry.client.control.inspect(destination=[entry.node], timeout=5).revoked() or {}
    assert entry.node in replies, f"{entry.node} did not answer inspect revoked"
    return replies[entry.node]


def test_only_a_mingling_worker_learns_revokes_issued_before_it_started(worker_env, start_entrypoint) -> None:
    token = worker_env["REDIS_KEY_PREFIX"][6:14]
    running = start_entrypoint(worker_env)
    running.wait_ready()
    task_id = str(uuid.uuid4())
    running.client.control.revoke(task_id)
    assert task_id in revoked_on(running)

    mingling = start_entrypoint({**worker_env, "CELERY_WORKER_MINGLE": "yes",
                                 "CELERY_WORKER_HOSTNAME": f"ctr-{token}-mingle@localhost"})
    mingling.wait_ready()
    assert task_id in revoked_on(mingling), "mingle copies the running workers' revokes at start"
    assert "mingle: searching for neighbors" in mingling.log()

    alone = start_entrypoint({**worker_env, "CELERY_WORKER_HOSTNAME": f"ctr-{token}-default@localhost"})
    alone.wait_ready()
    assert task_id not in revoked_on(alone), "the default start skips mingle, so earlier revokes stay unknown"
    assert "mingle: searching for neighbors" not in alone.log()
