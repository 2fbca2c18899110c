"""The ORM layer alone: a database whose tables have row-level security switched off still filters by tenant."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import create_engine, delete, event, exists, func, insert, literal, select, text, update
from sqlalchemy.orm import aliased, selectinload
from sqlalchemy.pool import NullPool

from tests.db.conftest import disable_rls, seed
from worker.db import MigrationError
from worker.db.migrate import migrate
from worker.db.models import Organization, Test, TestSet
from worker.db.session import tenant_session
from worker.errors import TenantConflictError


@pytest.fixture
def without_rls(make_database):  # type: ignore[no-untyped-def]
    """A migrated throwaway database with RLS disabled everywhere, seeded with three organizations."""
    db = make_database()
    disable_rls(db)
    orgs = [str(uuid.uuid4()) for _ in range(3)]
    engine = create_engine(db.owner_url)
    ids = seed(engine, {orgs[0]: [3, 1], orgs[1]: [2], orgs[2]: [1, 1, 1]})
    yield db, engine, orgs, ids
    engine.dispose()


def test_rls_really_is_off(without_rls) -> None:
    _db, engine, orgs, _ids = without_rls
    with tenant_session(orgs[0], engine=engine) as db:
        assert db.scalar(text("select count(*) from test_set")) == 6  # raw SQL: unfiltered without RLS


def test_orm_queries_are_filtered_per_tenant(without_rls) -> None:
    _db, engine, orgs, ids = without_rls
    expected_sets, expected_tests = {orgs[0]: 2, orgs[1]: 1, orgs[2]: 3}, {orgs[0]: 4, orgs[1]: 2, orgs[2]: 3}
    for _round in range(2):  # alternate tenants: the cached criteria lambda must take the new value each time
        for org in orgs:
            with tenant_session(org, engine=engine) as db:
                assert db.scalar(select(func.count()).select_from(TestSet)) == expected_sets[org]
                assert db.scalar(select(func.count(Test.id))) == expected_tests[org]
                assert {str(o.organization_id) for o in db.scalars(select(TestSet))} == {org}
                assert [str(o.id) for o in db.scalars(select(Organization))] == [org]
                joined = db.scalars(select(Test).join(TestSet, Test.test_set_id == TestSet.id)).all()
                assert len(joined) == expected_tests[org]
                alias = aliased(TestSet)
                assert db.scalar(select(func.count()).select_from(alias)) == expected_sets[org]
                other = ids[orgs[(orgs.index(org) + 1) % 3]][0]
                assert db.get(TestSet, uuid.UUID(other)) is None


def test_relationship_loads_are_filtered(without_rls) -> None:
    database, engine, orgs, ids = without_rls
    own_set, foreign_set = ids[orgs[0]][0], ids[orgs[1]][0]
    # A test of org 1 that points at org 0's set: only possible once the composite foreign key is gone (as in
    # a database that lost it, or rows written around it). Only the loader criteria can keep it out now.
    admin = create_engine(database.admin_url, poolclass=NullPool)
    with admin.begin() as conn:
        conn.execute(text("alter table test drop constraint fk_test_test_set_same_org"))
        conn.execute(text("insert into test (organization_id, test_set_id, prompt) values (:o, :s, 'intruder')"),
                     {"o": orgs[1], "s": own_set})
        assert conn.scalar(text("select count(*) from test where test_set_id = :s"), {"s": own_set}) == 3 + 1
    admin.dispose()
    with tenant_session(orgs[0], engine=engine) as db:
        lazy = db.get(TestSet, uuid.UUID(own_set)).tests
        assert {(str(t.organization_id), t.prompt) for t in lazy} == {(orgs[0], f"p{j}") for j in range(3)}
    with tenant_session(orgs[0], engine=engine) as db:
        eager = db.scalars(select(TestSet).where(TestSet.id == uuid.UUID(own_set))
                           .options(selectinload(TestSet.tests))).one().tests
        assert {(str(t.organization_id), t.prompt) for t in eager} == {(orgs[0], f"p{j}") for j in range(3)}
        assert db.get(TestSet, uuid.UUID(foreign_set)) is None


def test_orm_update_and_delete_are_filtered(without_rls) -> None:
    _db, engine, orgs, _ids = without_rls
    with tenant_session(orgs[1], engine=engine) as db:
        assert db.execute(update(Test).values(prompt="rewritten")).rowcount == 2
        assert db.execute(delete(Test).where(Test.prompt == "p0")).rowcount == 0
    with tenant_session(orgs[0], engine=engine) as db:
        assert db.scalar(select(func.count()).where(Test.prompt == "rewritten")) == 0
        assert db.execute(delete(Test).where(Test.prompt == "p0")).rowcount == 2


def test_migrate_refuses_the_database_without_rls(without_rls) -> None:
    db, _engine, _orgs, _ids = without_rls
    with pytest.raises(MigrationError, match="lacks ENABLE and FORCE"):
        migrate(db.owner_url, db.runtime_url)


def test_tables_named_only_in_where_or_subqueries_are_filtered(without_rls) -> None:
    _db, engine, orgs, ids = without_rls
    for _round in range(2):  # the FROM list is kept per statement shape: the second round reuses it, per tenant
        for org, expected in zip(orgs, (2, 1, 3), strict=True):
            with tenant_session(org, engine=engine) as db:
                assert db.scalar(select(func.count()).where(Test.prompt == "p0")) == expected
    with tenant_session(orgs[1], engine=engine) as db:
        in_sets = select(TestSet).where(TestSet.id.in_(select(Test.test_set_id).where(Test.prompt == "p0")))
        assert [str(s.id) for s in db.scalars(in_sets)] == ids[orgs[1]]
        union = select(TestSet.id).union_all(select(Test.id))
        assert len(db.execute(union).all()) == 1 + 2
        assert len(db.scalars(select(TestSet).from_statement(text("select * from test_set"))).all()) == 6


def test_a_table_whose_subquery_carries_the_criteria_is_filtered_itself(without_rls) -> None:
    """The criteria in a subquery on the same table do not count for the table of the outer FROM list."""
    _db, engine, orgs, _ids = without_rls
    table = TestSet.__table__
    for _round in range(2):  # the second round takes the shape's answer from the cache
        for org, expected in zip(orgs, (2, 1, 3), strict=True):
            with tenant_session(org, engine=engine) as db:
                statement = select(func.count()).select_from(table).where(exists(select(TestSet.id)))
                assert db.scalar(statement) == expected
                assert db.scalar(select(func.count()).select_from(table)) == expected


def test_an_entity_the_loader_criteria_filter_gets_no_second_predicate(without_rls) -> None:
    """Each tenant predicate costs CPU per statement (building, caching, binding): one per FROM entry is enough."""
    _db, engine, orgs, _ids = without_rls
    sent: list[str] = []
    listen = (engine, "before_cursor_execute", lambda *args: sent.append(args[2]))
    event.listen(*listen)
    try:
        for _round in range(2):
            with tenant_session(orgs[2], engine=engine) as db:
                assert db.scalar(select(func.count()).select_from(TestSet)) == 3
                assert len(db.scalars(select(TestSet)).all()) == 3
    finally:
        event.remove(*listen)
    selects = [statement for statement in sent if "FROM test_set" in statement]
    assert len(selects) == 4, sent
    assert all(statement.count("test_set.organization_id =") == 1 for statement in selects), selects


def test_one_statement_object_run_by_alternating_tenants_sees_each_tenants_rows(without_rls) -> None:
    """A statement object run again reuses its filtered form (worker/db/criteria.py ``_FILTERED``): it must not
    keep the organization of the tenant that ran it first."""
    _db, engine, orgs, _ids = without_rls
    count_sets = select(func.count()).select_from(TestSet)
    count_where_only = select(func.count()).where(Test.prompt == "p0")  # filtered by a predicate of its own
    every_set = select(TestSet)
    for _round in range(3):
        for org, sets, where_only in zip(orgs, (2, 1, 3), (2, 1, 3), strict=True):
            with tenant_session(org, engine=engine) as db:
                assert db.scalar(count_sets) == sets
                assert db.scalar(count_where_only) == where_only
                assert {str(s.organization_id) for s in db.scalars(every_set)} == {org}


def test_orm_insert_and_update_statements_cannot_write_another_organization(without_rls) -> None:
    _db, engine, orgs, _ids = without_rls
    with tenant_session(orgs[0], engine=engine) as db:
        with pytest.raises(TenantConflictError, match="writes organization"):
            db.execute(update(TestSet).values(organization_id=uuid.UUID(orgs[1])))
    with tenant_session(orgs[0], engine=engine) as db:
        with pytest.raises(TenantConflictError, match="writes organization"):
            db.execute(insert(TestSet), [{"organization_id": uuid.UUID(orgs[0]), "name": "mine"},
                                         {"organization_id": uuid.UUID(orgs[1]), "name": "theirs"}])
    with tenant_session(orgs[0], engine=engine) as db:
        with pytest.raises(TenantConflictError, match="writes organization"):
            db.execute(insert(TestSet).values(organization_id=uuid.UUID(orgs[2]), name="theirs"))
    with tenant_session(orgs[0], engine=engine) as db:  # its own organization is fine
        db.execute(insert(TestSet), [{"organization_id": uuid.UUID(orgs[0]), "name": "mine"}])
        db.execute(update(TestSet).where(TestSet.name == "mine").values(organization_id=uuid.UUID(orgs[0])))
    with tenant_session(orgs[1], engine=engine) as db:
        assert db.scalar(select(func.count()).select_from(TestSet)) == 1  # untouched


def test_multi_row_and_core_writes_cannot_write_another_organization(without_rls) -> None:
    _db, engine, orgs, _ids = without_rls
    table = TestSet.__table__
    mine, theirs = uuid.UUID(orgs[0]), uuid.UUID(orgs[1])
    attempts = {
        "multi-row values": insert(TestSet).values([{"organization_id": mine, "name": "a"},
                                                    {"organization_id": theirs, "name": "b"}]),
        "Core multi-row values": table.insert().values([{"organization_id": mine, "name": "a"},
                                                        {"organization_id": theirs, "name": "b"}]),
        "Core positional values": table.insert().values([(uuid.uuid4(), theirs, None, "b")]),
        "Core update": table.update().values(organization_id=theirs),
        "Core ordered update": table.update().ordered_values((table.c.organization_id, theirs)),
        "from_select": insert(TestSet).from_select(["organization_id", "name"],
                                                   select(literal(theirs), literal("copied"))),
        "expression": insert(TestSet).values(organization_id=select(Organization.id).where(
            Organization.id == theirs).scalar_subquery(), name="sneaky"),
    }
    for what, statement in attempts.items():
        with tenant_session(orgs[0], engine=engine) as db, pytest.raises(TenantConflictError):
            db.execute(statement)
            pytest.fail(f"{what} was not refused")
    with tenant_session(orgs[0], engine=engine) as db:  # its own organization, several rows at once: fine
        db.execute(insert(TestSet).values([{"organization_id": mine, "name": "x"},
                                           {"organization_id": mine, "name": "y"}]))
    with tenant_session(orgs[1], engine=engine) as db:
        assert db.scalar(select(func.count()).select_from(TestSet)) == 1  # nothing arrived


def test_core_update_and_delete_through_a_session_are_filtered(without_rls) -> None:
    _db, engine, orgs, _ids = without_rls
    table, tests = TestSet.__table__, Test.__table__
    with tenant_session(orgs[1], engine=engine) as db:
        assert db.execute(table.update().values(name="renamed")).rowcount == 1
        assert db.execute(tests.delete()).rowcount == 2
    with tenant_session(orgs[0], engine=engine) as db:
        assert db.scalar(select(func.count()).where(TestSet.name == "renamed")) == 0
        assert db.scalar(select(func.count()).select_from(Test)) == 4


def test_a_lazy_load_is_filtered_by_its_own_session_after_another_tenant_ran_a_statement(without_rls) -> None:
    _db, engine, orgs, ids = without_rls
    with tenant_session(orgs[0], engine=engine) as a, tenant_session(orgs[1], engine=engine) as b:
        own_set = a.get(TestSet, uuid.UUID(ids[orgs[0]][0]))
        assert b.scalar(select(func.count()).select_from(TestSet)) == 1  # B's statement, on the same thread
        assert sorted(t.prompt for t in own_set.tests) == ["p0", "p1", "p2"]  # A's lazy load, A's organization
