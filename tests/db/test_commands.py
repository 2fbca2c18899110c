"""Demo data and the ``python -m worker`` commands, the latter as real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy import func, select

from worker.db import MigrationError
from worker.db.demo_data import DEMO_ORGANIZATIONS, create_demo_data
from worker.db.migrate import current_revision
from worker.db.models import Endpoint, Organization, Test, TestConfiguration, TestSet, User
from worker.db.session import tenant_session

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full_env = {key: value for key, value in os.environ.items()
                if key not in ("DATABASE_URL", "MIGRATION_DATABASE_URL")}
    full_env.update({"ENV_FILE": "/nonexistent/.env", "PYTHONPATH": str(ROOT), **env})
    return subprocess.run([sys.executable, "-m", "worker", *args], cwd=ROOT, env=full_env, capture_output=True,
                          text=True, timeout=120)


def test_demo_data_is_idempotent_and_sized_differently_per_organization(pgdb, runtime_engine) -> None:
    first = create_demo_data(pgdb.owner_url)
    assert [o["name"] for o in first["organizations"]] == [name for name, _, _ in DEMO_ORGANIZATIONS]
    assert all(o["created"] for o in first["organizations"])
    tests_per_org = [sum(s["tests"] for s in o["test_sets"]) for o in first["organizations"]]
    assert len(set(tests_per_org)) == len(tests_per_org)  # every organization has a different number of tests
    assert first["totals"]["organizations"] == 3
    assert first["totals"]["tests"] == sum(tests_per_org)
    for org in first["organizations"]:
        assert len(org["users"]) >= 2 and org["endpoints"]
        assert len(org["test_configurations"]) == len(org["test_sets"])

    second = create_demo_data(pgdb.owner_url)
    assert not any(o["created"] for o in second["organizations"])
    assert second["totals"] == first["totals"]

    # The runtime role sees each organization's data, and only that, through a tenant session.
    for org, expected_tests in zip(first["organizations"], tests_per_org, strict=True):
        with tenant_session(org["id"], org["users"][0]["id"], engine=runtime_engine) as db:
            assert db.scalar(select(func.count()).select_from(Test)) == expected_tests
            assert db.scalar(select(func.count()).select_from(TestSet)) == len(org["test_sets"])
            assert db.scalar(select(func.count()).select_from(User)) == len(org["users"])
            assert db.scalar(select(func.count()).select_from(Endpoint)) == len(org["endpoints"])
            assert db.scalar(select(func.count()).select_from(TestConfiguration)) == len(org["test_configurations"])
            assert [str(o.id) for o in db.scalars(select(Organization))] == [org["id"]]


def test_demo_data_needs_a_migrated_database(make_database) -> None:
    db = make_database(migrated=False)
    with pytest.raises(MigrationError, match="not migrated"):
        create_demo_data(db.owner_url)


def test_cli_migrate_and_demo_data(make_database) -> None:
    db = make_database(migrated=False)
    env = {"DATABASE_URL": db.runtime_url, "MIGRATION_DATABASE_URL": db.owner_url}

    refused = run_cli("demo-data", env=env)
    assert refused.returncode == 1
    assert "not migrated" in refused.stderr

    migrated = run_cli("migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    assert current_revision(db.owner_url) == "0007"
    assert db.owner_url.split("@")[0].split(":")[-1] not in migrated.stdout + migrated.stderr  # password masked
    assert run_cli("migrate", env=env).returncode == 0  # again: a no-op plus grants

    demo = run_cli("demo-data", "--json", env=env)
    assert demo.returncode == 0, demo.stderr
    summary = json.loads(demo.stdout)
    assert summary["totals"]["organizations"] == 3
    assert all(o["created"] for o in summary["organizations"])

    listing = run_cli("demo-data", env=env)
    assert listing.returncode == 0, listing.stderr
    for org in summary["organizations"]:
        assert f"organization {org['name']}  id={org['id']}  (already present)" in listing.stdout


def test_cli_migrate_refuses_the_owner_as_runtime_role(make_database) -> None:
    db = make_database(migrated=False)
    same = run_cli("migrate", env={"DATABASE_URL": db.owner_url})  # MIGRATION_DATABASE_URL falls back to it
    assert same.returncode == 1
    assert "same role" in same.stderr
    allowed = run_cli("migrate", "--allow-owner-runtime", env={"DATABASE_URL": db.owner_url})
    assert allowed.returncode == 0, allowed.stderr
    assert "OWNS THE TABLES" in allowed.stderr


def test_cli_migrate_refuses_a_superuser_runtime_role(pgdb, admin_role) -> None:
    from tests.db.conftest import url_for_role

    role = admin_role("SUPERUSER")
    result = run_cli("migrate", env={"DATABASE_URL": url_for_role(pgdb.runtime_url, role),
                                     "MIGRATION_DATABASE_URL": pgdb.owner_url})
    assert result.returncode == 1
    assert f"runtime role '{role}' is a superuser" in result.stderr


@pytest.mark.parametrize("command", ["migrate", "demo-data"])
def test_cli_configuration_error_exits_64(command: str) -> None:
    result = run_cli(command, env={"DATABASE_URL": f"mysql://nobody@localhost/{uuid.uuid4().hex}"})
    assert result.returncode == 64
    assert result.stderr.startswith("configuration error: ")
    assert "DATABASE_URL" in result.stderr


def test_cli_without_a_command_is_a_usage_error() -> None:
    result = run_cli(env={})
    assert result.returncode == 2
    assert "migrate" in result.stderr and "demo-data" in result.stderr


def test_cli_unreachable_database_is_one_line_error() -> None:
    from worker.dev.services import free_port

    url = f"postgresql://nobody:secret-pw@127.0.0.1:{free_port()}/nowhere"
    result = run_cli("migrate", env={"DATABASE_URL": url})
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith("migrate: database unavailable: ")
    assert "Traceback" not in result.stderr and "secret-pw" not in result.stderr


def test_demo_data_runs_concurrently_without_duplicates(make_database) -> None:
    from concurrent.futures import ThreadPoolExecutor

    db = make_database(migrated=True)
    with ThreadPoolExecutor(4) as pool:
        totals = list(pool.map(lambda _: create_demo_data(db.owner_url)["totals"], range(4)))
    assert all(t == totals[0] for t in totals)
    assert totals[0]["organizations"] == len(DEMO_ORGANIZATIONS)
