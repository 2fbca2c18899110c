"""Revision 0006 (execution lanes): a run's cap split into leased lanes, held by one lane task at a time, reserved for
successors, taken over when the holder's lease expires, invisible to other tenants; tests leased ahead and handed
back unstarted do not count towards giving up on a test."""

from __future__ import annotations

import uuid

from sqlalchemy import select, text
from sqlalchemy.engine import Engine

from tests.db.test_execution_schema import Org, make_org, make_run
from worker.db.models import TestRunLane
from worker.db.session import tenant_session
from worker.execution import store


def _run_with_pending(engine: Engine, org: Org) -> uuid.UUID:
    return make_run(engine, org, items={index: ("pending", None) for index in range(len(org.tests))})


def test_shares_split_the_cap_exactly() -> None:
    for cap in (1, 7, 50, 99, 100, 101, 1000):
        for lane_cap in (1, 3, 50, 1000):
            shares = store.lane_split(cap, lane_cap)
            assert sum(shares) == cap
            assert max(shares) <= lane_cap and min(shares) >= 1


def test_the_first_split_stands_whatever_later_workers_would_choose(runtime_engine, owner_engine) -> None:
    # Workers configured with different lane sizes (a rolling deploy) must not split one cap twice.
    org = make_org(owner_engine)
    run = _run_with_pending(owner_engine, org)
    with tenant_session(org.id, org.user, engine=runtime_engine) as db:
        store.reserve_lanes(db, run, store.lane_split(100, 50), 1, 60)
        assert store.take_lane(db, run, "lane-a", store.lane_split(100, 25), 60) == (1, 50)
        assert store.reserve_lanes(db, run, store.lane_split(100, 10), None, 60) == []
        assert db.scalar(text("SELECT sum(share) FROM public.test_run_lane WHERE test_run_id = :run"),
                         {"run": run}) == 100


def test_a_lane_is_held_by_one_task_at_a_time(runtime_engine, owner_engine) -> None:
    org = make_org(owner_engine)
    run = _run_with_pending(owner_engine, org)
    with tenant_session(org.id, org.user, engine=runtime_engine) as db:
        assert store.take_lane(db, run, "lane-a", [3, 2], 60) == (0, 3)
        assert store.take_lane(db, run, "lane-a", [3, 2], 60) == (0, 3)  # a retried transaction: its own lane
        assert store.take_lane(db, run, "lane-b", [3, 2], 60, lane=0) == (1, 2)  # lane 0 is held: the next one
        assert store.take_lane(db, run, "lane-c", [3, 2], 60) is None  # every lane held
        store.release_lane(db, run, "lane-a")
        assert store.take_lane(db, run, "lane-c", [3, 2], 60) == (0, 3)


def test_a_reservation_is_kept_for_its_token_until_it_expires(runtime_engine, owner_engine) -> None:
    org = make_org(owner_engine)
    run = _run_with_pending(owner_engine, org)
    with tenant_session(org.id, org.user, engine=runtime_engine) as db:
        reserved = store.reserve_lanes(db, run, [1, 1], 5, 60)
        assert [lane for lane, _ in reserved] == [0, 1]  # never more than the run's lanes
        assert store.reserve_lanes(db, run, [1, 1], None, 60) == []
        (_, token0), (_, token1) = reserved
        assert store.take_lane(db, run, "stranger", [1, 1], 60) is None  # reserved lanes are not free
        assert store.take_lane(db, run, "lane-x", [1, 1], 60, lane=1, token=token1) == (1, 1)
        assert store.take_lane(db, run, "lane-y", [1, 1], 60, lane=0, token=token1) is None  # the wrong token
        successor = store.hand_over_lane(db, run, "lane-x", 60)
        assert successor and successor != token1
        assert store.take_lane(db, run, "lane-z", [1, 1], 60, lane=1, token=successor) == (1, 1)
        # A holder that died: its lease expires, and the lane is free again.
        db.execute(text("UPDATE public.test_run_lane SET lease_expires_at = now() - interval '1 second' "
                        "WHERE test_run_id = :run AND lane = 0"), {"run": run})
        assert store.take_lane(db, run, "lane-w", [1, 1], 60) == (0, 1)
        assert token0 not in db.scalars(select(TestRunLane.owner)).all()


def test_tests_leased_ahead_and_handed_back_unstarted_are_never_given_up_on(runtime_engine, owner_engine) -> None:
    org = make_org(owner_engine, tests=2)
    run = _run_with_pending(owner_engine, org)
    with tenant_session(org.id, org.user, engine=runtime_engine) as db:
        for round_ in range(store.MAX_CLAIMS + 3):
            owner = f"lane-{round_}"
            claimed = store.exchange(db, run, owner, [], 2, run_cap=None, lease_seconds=60).claimed
            assert sorted(claimed) == sorted(org.tests), f"round {round_}: a test was given up on"
            store.release(db, run, owner)  # leased ahead, never started
        assert db.scalar(text("SELECT count(*) FROM public.test_result WHERE test_run_id = :run"),
                         {"run": run}) == 0
        # A test whose call started and was cut short does count: after MAX_CLAIMS it is stored as an error.
        for round_ in range(store.MAX_CLAIMS):
            owner = f"started-{round_}"
            claimed = store.exchange(db, run, owner, [], 2, run_cap=None, lease_seconds=60).claimed
            store.release(db, run, owner, started=claimed)
        store.exchange(db, run, "last", [], 2, run_cap=None, lease_seconds=60)
        assert db.scalar(text("SELECT count(*) FROM public.test_result WHERE test_run_id = :run AND "
                              "status = 'error'"), {"run": run}) == 2


def test_another_tenant_sees_no_lane(runtime_engine, owner_engine) -> None:
    a, b = make_org(owner_engine), make_org(owner_engine)
    run = _run_with_pending(owner_engine, b)
    with tenant_session(b.id, b.user, engine=runtime_engine) as db:
        store.reserve_lanes(db, run, [1, 1], 2, 60)
    with tenant_session(a.id, a.user, engine=runtime_engine) as db:
        assert db.scalar(text("SELECT count(*) FROM public.test_run_lane")) == 0
        assert store.take_lane(db, run, "intruder", [1, 1], 60) is None  # B's run is not A's to lane
        assert store.reserve_lanes(db, run, [1, 1], 2, 60) == []
    with tenant_session(b.id, b.user, engine=runtime_engine) as db:
        assert db.scalar(text("SELECT count(*) FROM public.test_run_lane WHERE owner LIKE 'reserved:%'")) == 2
