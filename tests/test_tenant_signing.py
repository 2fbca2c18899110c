"""Signed tenants (TENANT_SIGNING_KEY): every product publish is signed, a worker with a key runs nothing else.

Real prefork workers and Redis. Forged messages are made the way a broker writer would: take a message a keyed
producer really published (parked in a queue no worker reads), change it, LPUSH it into the worker's queue.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery, chain, chord, group

from config import ConfigError, load_settings
from tests.conftest import ROOT, WorkerProcess, start_worker_process
from tests.test_poison_messages import body_of, envelope
from worker.message_guard import DEAD_LETTER_KEY
from worker.tenant.signing import SIGNATURE_HEADER, TenantSigner, canonical, key_id

ORG = "0b7d4f6e-1c2a-4e58-9a41-6c3f2e1d0a01"
USER = "5a2e9c1b-7d4f-4b3e-8c6a-1f0e9d8c7b02"
VICTIM = "9e8d7c6b-5a49-4838-a726-150493827163"
NEW_KEY = "new-signing-key-" + "n" * 24 + "-4f1c9a"
OLD_KEY = "old-signing-key-" + "o" * 24 + "-77d2e0"
STRANGER_KEY = "stranger-key-" + "s" * 30
HOLD = "signing-hold"  # a queue no worker consumes: where genuine messages are parked to be tampered with
TIMEOUT = 30
COUNT_RUN = "tests.signing.count_run"


def make_app(env: dict[str, str], key: str | None, main: str) -> Celery:
    from tests.support import probe_tasks  # noqa: F401 - probe task names for this app
    from worker.app import create_app

    environ = {**env, **({"TENANT_SIGNING_KEY": key} if key is not None else {})}
    return create_app(load_settings(environ=environ), main=main)


@pytest.fixture(scope="module")
def apps(session_env: dict[str, str], client_app: Celery) -> Iterator[dict[str, Celery]]:
    made = {"new": make_app(session_env, NEW_KEY, "signing-new"), "old": make_app(session_env, OLD_KEY, "signing-old"),
            "stranger": make_app(session_env, STRANGER_KEY, "signing-stranger"), "unkeyed": client_app}
    yield made
    for name in ("new", "old", "stranger"):
        made[name].close()


@pytest.fixture(scope="module")
def keys(session_env: dict[str, str]) -> dict[str, str]:
    prefix = session_env["REDIS_KEY_PREFIX"]
    return {"queue": f"{prefix}celery", "hold": f"{prefix}{HOLD}", "dead": f"{prefix}{DEAD_LETTER_KEY}",
            "runs": f"{prefix}signing-runs-{uuid.uuid4().hex[:8]}"}


@pytest.fixture(scope="module")
def worker(session_env: dict[str, str], run_dir: Path, client_app: Celery, broker: redis.Redis,
           keys: dict[str, str]) -> Iterator[WorkerProcess]:
    """Mid-rotation: signs with the new key, still accepts the old one."""
    broker.delete(keys["dead"], keys["queue"], keys["hold"])
    process = start_worker_process({**session_env, "TENANT_SIGNING_KEY": f"{NEW_KEY},{OLD_KEY}"}, run_dir,
                                   "prefork", 2, app="tests.support.signing_worker_app", ping_app=client_app)
    yield process
    process.stop()
    log = process.log()
    for key in (NEW_KEY, OLD_KEY):
        assert key not in log, "a signing key appeared in the worker log"


def probe(app: Celery, name: str) -> Any:
    return app.tasks[f"tests.probe.{name}"]


def tenant_headers() -> dict[str, Any]:
    return {"headers": {"organization_id": ORG, "user_id": USER}}


def assert_tenant(seen: dict[str, Any]) -> None:
    assert (seen["organization_id"], seen["user_id"]) == (ORG, USER), seen


def wait_for(condition: Callable[[], bool], what: str, worker: WorkerProcess, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        assert worker.proc.poll() is None, worker.log()[-4000:]
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}:\n{worker.log()[-4000:]}")


def dead_letters(broker: redis.Redis, keys: dict[str, str]) -> list[dict[str, Any]]:
    return [json.loads(item) for item in broker.lrange(keys["dead"], 0, -1)]


def park(app: Celery, broker: redis.Redis, keys: dict[str, str], **headers: Any) -> dict[str, Any]:
    """A message ``app`` really publishes (count_run), taken back out of the hold queue as an envelope."""
    app.send_task(COUNT_RUN, args=(keys["runs"],), queue=HOLD, headers=headers or None)
    raw = broker.rpop(keys["hold"])
    assert raw is not None, "the parked message is not in the hold queue"
    return json.loads(raw)


def deliver(broker: redis.Redis, keys: dict[str, str], message: dict[str, Any]) -> None:
    message["properties"]["delivery_info"]["routing_key"] = "celery"
    broker.lpush(keys["queue"], json.dumps(message))


# -- round trips ------------------------------------------------------------------------------------------------

def test_signed_round_trip_plain_retry_child_chain_group_chord(worker: WorkerProcess, apps: dict[str, Celery],
                                                               broker: redis.Redis, keys: dict[str, str]) -> None:
    app = apps["new"]
    assert_tenant(probe(app, "tenant").apply_async(**tenant_headers()).get(TIMEOUT))
    # Retries are new messages with the same id, published (and so signed) by the worker.
    assert probe(app, "retry_once").apply_async(**tenant_headers()).get(TIMEOUT)["retries"] == 1
    assert probe(app, "autoretry_once").apply_async(**tenant_headers()).get(TIMEOUT)["retries"] == 1
    child_id = probe(app, "spawn_child").apply_async(**tenant_headers()).get(TIMEOUT)
    assert_tenant(app.AsyncResult(child_id).get(TIMEOUT))
    steps = chain(probe(app, "tenant").s(), probe(app, "tenant").s(), probe(app, "tenant").s())
    assert_tenant(steps.apply_async(**tenant_headers()).get(TIMEOUT))
    for seen in group(probe(app, "tenant").s() for _ in range(3)).apply_async(**tenant_headers()).get(TIMEOUT):
        assert_tenant(seen)
    seen = chord([probe(app, "tenant").s() for _ in range(3)], probe(app, "tenant").s()).apply_async(
        **tenant_headers()).get(TIMEOUT)
    assert_tenant(seen)
    assert len(seen["previous"][0]) == 3
    # A message without a tenant is signed too (empty tenant fields) and runs.
    assert probe(app, "tenant").apply_async().get(TIMEOUT)["organization_id"] is None
    assert broker.llen(keys["dead"]) == 0, dead_letters(broker, keys)


def test_key_rotation_old_key_verifies_new_key_signs_unknown_key_is_refused(
        worker: WorkerProcess, apps: dict[str, Celery], broker: redis.Redis, keys: dict[str, str]) -> None:
    broker.delete(keys["dead"])
    assert_tenant(probe(apps["old"], "tenant").apply_async(**tenant_headers()).get(TIMEOUT))
    assert_tenant(probe(apps["new"], "tenant").apply_async(**tenant_headers()).get(TIMEOUT))
    parked = park(apps["old"], broker, keys, organization_id=ORG)
    assert parked["headers"][SIGNATURE_HEADER].startswith(f"v1:{key_id(OLD_KEY.encode())}:")
    assert park(apps["new"], broker, keys)["headers"][SIGNATURE_HEADER].startswith(f"v1:{key_id(NEW_KEY.encode())}:")

    before = int(broker.get(keys["runs"]) or 0)
    apps["stranger"].send_task(COUNT_RUN, args=(keys["runs"],), headers={"organization_id": ORG})
    wait_for(lambda: broker.llen(keys["dead"]) >= 1, "the stranger's message to be dead-lettered", worker)
    [entry] = dead_letters(broker, keys)
    assert "unknown key id" in entry["reason"], entry
    assert int(broker.get(keys["runs"]) or 0) == before


def test_without_a_key_nothing_is_signed(apps: dict[str, Celery], broker: redis.Redis, keys: dict[str, str]) -> None:
    assert SIGNATURE_HEADER not in park(apps["unkeyed"], broker, keys, organization_id=ORG)["headers"]


# -- forgeries -----------------------------------------------------------------------------------------------------

def _swap_tenant(message: dict[str, Any], other: dict[str, Any]) -> None:
    message["headers"]["organization_id"] = VICTIM


def _strip_tenant(message: dict[str, Any], other: dict[str, Any]) -> None:
    message["headers"].pop("organization_id")
    message["headers"].pop("user_id")


def _signature_of_another_message(message: dict[str, Any], other: dict[str, Any]) -> None:
    message["headers"][SIGNATURE_HEADER] = other["headers"][SIGNATURE_HEADER]


def _tenant_in_nested_headers(message: dict[str, Any], other: dict[str, Any]) -> None:
    message["headers"]["headers"] = {"organization_id": VICTIM}


def _tenant_in_kwargs(message: dict[str, Any], other: dict[str, Any]) -> None:
    """The worker falls back to kwargs when the headers name no tenant: the body is covered too."""
    message["body"] = body_of([[], {"counter": message["_counter"], "organization_id": VICTIM}, {}])


def _tenant_in_embedded_chain_step(message: dict[str, Any], other: dict[str, Any]) -> None:
    """A chain step the worker itself would publish (and sign) as the victim."""
    step = {"task": COUNT_RUN, "args": [message["_counter"]], "kwargs": {}, "subtask_type": None,
            "options": {"headers": {"organization_id": VICTIM}}, "immutable": True}
    message["body"] = body_of([[message["_counter"]], {}, {"chain": [step]}])


FORGERIES = {
    "tenant swapped": (_swap_tenant, "does not match"),
    "tenant stripped": (_strip_tenant, "does not match"),
    "signature of another message": (_signature_of_another_message, "does not match"),
    "tenant added in nested headers": (_tenant_in_nested_headers, "does not match"),
    "tenant added in kwargs": (_tenant_in_kwargs, "does not match"),
    "tenant in an embedded chain step": (_tenant_in_embedded_chain_step, "does not match"),
    "signature removed": (lambda message, other: message["headers"].pop(SIGNATURE_HEADER), "unsigned message"),
    "signature garbled": (lambda message, other: message["headers"].update({SIGNATURE_HEADER: "v1:zz"}),
                          "is not v1:<key id>:<hex digest>"),
}


def test_forged_messages_are_dead_lettered_never_run_never_retried(
        worker: WorkerProcess, apps: dict[str, Celery], broker: redis.Redis, keys: dict[str, str]) -> None:
    broker.delete(keys["dead"], keys["runs"])
    logged_before = worker.log().count("discarded malformed message")
    # The control: a genuine parked message, delivered unchanged, runs once as its own tenant.
    genuine = park(apps["new"], broker, keys, organization_id=ORG, user_id=USER)
    deliver(broker, keys, genuine)
    assert_tenant(apps["new"].AsyncResult(genuine["headers"]["id"]).get(TIMEOUT))
    assert int(broker.get(keys["runs"])) == 1

    forged_ids = {}
    for name, (forge, _) in FORGERIES.items():
        message = park(apps["new"], broker, keys, organization_id=ORG, user_id=USER)
        other = park(apps["new"], broker, keys, organization_id=VICTIM)  # a genuine signature for the victim
        message["_counter"] = keys["runs"]
        forge(message, other)
        message.pop("_counter")
        forged_ids[message["headers"]["id"]] = name
        deliver(broker, keys, message)
    wait_for(lambda: broker.llen(keys["dead"]) >= len(FORGERIES), "every forgery to be dead-lettered", worker)
    time.sleep(2)  # room for a retry or a second delivery, which must not come
    entries = dead_letters(broker, keys)
    assert len(entries) == len(FORGERIES), entries
    for entry in entries:
        task_id = json.loads(entry["payload"])["headers"]["id"]
        name = forged_ids.pop(task_id)
        assert FORGERIES[name][1] in entry["reason"], (name, entry["reason"])
        assert apps["new"].AsyncResult(task_id).state == "PENDING", name  # never started, never retried
    assert not forged_ids
    assert int(broker.get(keys["runs"])) == 1, "a forged message's task body ran"
    assert broker.llen(keys["queue"]) == 0
    log = worker.log()
    assert log.count("discarded malformed message") - logged_before == len(FORGERIES), log[-4000:]
    assert "Traceback" not in log


def test_unsigned_message_with_a_key_configured_is_rejected(
        worker: WorkerProcess, apps: dict[str, Celery], broker: redis.Redis, keys: dict[str, str]) -> None:
    broker.delete(keys["dead"], keys["runs"])
    task_id = apps["unkeyed"].send_task(COUNT_RUN, args=(keys["runs"],), headers={"organization_id": ORG}).id
    raw_unsigned = envelope(headers={"task": COUNT_RUN}, body=([keys["runs"]], {}, {}))  # hand-made, no signature
    broker.lpush(keys["queue"], json.dumps(raw_unsigned))
    wait_for(lambda: broker.llen(keys["dead"]) >= 2, "both unsigned messages to be dead-lettered", worker)
    time.sleep(1)
    entries = dead_letters(broker, keys)
    assert len(entries) == 2 and all("unsigned message" in e["reason"] for e in entries), entries
    assert broker.get(keys["runs"]) is None
    assert apps["unkeyed"].AsyncResult(task_id).state == "PENDING"


# -- the key stays secret ----------------------------------------------------------------------------------------

def run_config_check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "config", "check"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **env, "PYTHONPATH": str(ROOT)}, timeout=60, check=False)


def test_config_check_never_prints_the_key(session_env: dict[str, str], tmp_path: Path) -> None:
    done = run_config_check({**session_env, "TENANT_SIGNING_KEY": f"{NEW_KEY},{OLD_KEY}"})
    assert done.returncode == 0, done.stderr
    assert "TENANT_SIGNING_KEY" in done.stdout
    for key in (NEW_KEY, OLD_KEY):
        assert key not in done.stdout + done.stderr

    key_file = tmp_path / "signing-key"
    key_file.write_text(f"{NEW_KEY}\n")
    done = run_config_check({**session_env, "TENANT_SIGNING_KEY_FILE": str(key_file)})
    assert done.returncode == 0 and NEW_KEY not in done.stdout + done.stderr, done.stderr

    short = "short-but-secret-value"
    done = run_config_check({**session_env, "TENANT_SIGNING_KEY": f"{NEW_KEY},{short}"})
    assert done.returncode == 64, (done.stdout, done.stderr)
    assert "TENANT_SIGNING_KEY=(hidden) key 2 is shorter than 32 characters" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert short not in done.stderr and NEW_KEY not in done.stderr


# -- the option and the signer without a worker ---------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "expected"), [
    ("", ()), ("  ", ()), (NEW_KEY, (NEW_KEY,)), (f" {NEW_KEY} , {OLD_KEY} ", (NEW_KEY, OLD_KEY)),
])
def test_signing_key_option_accepts(raw: str, expected: tuple[str, ...]) -> None:
    settings = load_settings(environ={"TENANT_SIGNING_KEY": raw, "ENV_FILE": "/nonexistent"},
                             only=("TENANT_SIGNING_KEY",))
    assert settings.tenant_signing_key == expected


@pytest.mark.parametrize(("raw", "reason"), [
    ("x" * 31, "key 1 is shorter than 32 characters"),
    (f"{NEW_KEY},", "key 2 is empty"),
    (f"{NEW_KEY},{NEW_KEY}", "names the same key twice"),
    ("has space" + "x" * 30, "key 1 contains whitespace"),
])
def test_signing_key_option_refuses(raw: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=f"^TENANT_SIGNING_KEY=\\(hidden\\) {reason}; allowed: ") as caught:
        load_settings(environ={"TENANT_SIGNING_KEY": raw, "ENV_FILE": "/nonexistent"}, only=("TENANT_SIGNING_KEY",))
    assert raw not in str(caught.value)


def test_signer_covers_id_name_tenant_and_body_and_never_shows_the_key() -> None:
    signer = TenantSigner([NEW_KEY, OLD_KEY])
    headers = {"id": "t1", "task": "a.task", "organization_id": ORG, "user_id": USER}
    body = b'[[], {}, {}]'
    signed = {**headers, SIGNATURE_HEADER: signer.sign(headers, body)}
    assert signer.problem(signed, body) is None
    for changed in ({"id": "t2"}, {"task": "b.task"}, {"organization_id": VICTIM}, {"user_id": VICTIM},
                    {"organization_id": None}, {"headers": {"user_id": VICTIM}}):
        assert "does not match" in signer.problem({**signed, **changed}, body), changed
    assert "does not match" in signer.problem(signed, b'[[], {"organization_id": "x"}, {}]')
    # Field boundaries cannot move: the canonical form is a JSON array of strings.
    assert canonical({"id": "a", "task": "bc"}, b"") != canonical({"id": "ab", "task": "c"}, b"")
    assert NEW_KEY not in repr(signer) and OLD_KEY not in repr(signer)
    # Once rotation is over and a worker holds only the old key... the reverse: a worker without the new key refuses it.
    assert "unknown key id" in TenantSigner([OLD_KEY]).problem(signed, body)
