"""A message that pairs organization A with a user of organization B fails before its first query (running worker).

The database knows which organization a user belongs to (tenant_guard.user_organization, revision 0003); the
check runs in the statement that opens the first tenant transaction, so it costs no extra round trip.
"""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import create_engine

from worker.db.models import Organization, TestSet, User
from worker.db.session import tenant_session

TIMEOUT = 60
COUNT = "rhesis.backend.tasks.count_test_sets"


@pytest.fixture(scope="module")
def two_orgs_with_users(migrated_database):  # type: ignore[no-untyped-def]
    engine = create_engine(migrated_database.owner_url)
    made = {}
    for label in ("a", "b"):
        org, user = uuid.uuid4(), uuid.uuid4()
        with tenant_session(org, None, engine=engine) as db:
            db.add(Organization(id=org, name=f"users-{label}"))
            db.flush()
            db.add_all([User(id=user, organization_id=org, email=f"{label}@example.org"),
                        TestSet(organization_id=org, name="set")])
        made[label] = (str(org), str(user))
    engine.dispose()
    return made


@pytest.fixture(scope="module")
def worker(worker_factory):  # type: ignore[no-untyped-def]
    return worker_factory(pool="prefork", concurrency=2)


def test_user_of_another_organization_is_refused_not_retried(worker, client_app, two_orgs_with_users) -> None:
    (org_a, _), (_, user_b) = two_orgs_with_users["a"], two_orgs_with_users["b"]
    result = client_app.tasks[COUNT].apply_async(headers={"organization_id": org_a, "user_id": user_b})
    with pytest.raises(Exception, match="user of another organization") as excinfo:
        result.get(TIMEOUT)
    assert type(excinfo.value).__name__ == "TenantConflictError"
    assert (result.retries or 0) == 0


def test_own_and_unknown_users_pass(worker, client_app, two_orgs_with_users) -> None:
    org_a, user_a = two_orgs_with_users["a"]
    for user in (user_a, str(uuid.uuid4())):  # producers may name users this database does not hold
        seen = client_app.tasks[COUNT].apply_async(headers={"organization_id": org_a, "user_id": user}).get(TIMEOUT)
        assert seen == {"count": 1, "organization_id": org_a, "user_id": user}


def test_the_mirror_follows_deleted_users(migrated_database, two_orgs_with_users) -> None:
    """The mirror follows deletes too: a deleted user of B may then be named by A (it is unknown)."""
    from worker.errors import TenantConflictError

    (org_a, _), (org_b, user_b) = two_orgs_with_users["a"], two_orgs_with_users["b"]
    engine = create_engine(migrated_database.runtime_url)
    try:
        with pytest.raises(TenantConflictError), tenant_session(org_a, user_b, engine=engine) as db:
            db.scalar(TestSet.__table__.select().limit(1))
        with tenant_session(org_b, None, engine=engine) as db:
            db.delete(db.get(User, uuid.UUID(user_b)))
        with tenant_session(org_a, user_b, engine=engine) as db:
            db.scalar(TestSet.__table__.select().limit(1))
    finally:
        engine.dispose()
