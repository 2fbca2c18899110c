"""`python -m bench.database`: the cost of tenant isolation per short transaction, against the same query without it.

Baseline: a plain SQLAlchemy Session on an engine with SQLAlchemy's defaults, as a superuser (no RLS), running the
query with its own ``WHERE organization_id = ...``. Candidate: ``tenant_session`` on the worker's engine as the
runtime role: the sealed tenant (``tenant_guard.enter``), forced RLS, the ORM criteria, the session reset and the
checkout liveness check. Both run the same statement, once as SQL text (``text()``, which the ORM criteria do not
touch) and once as an ORM ``select`` (one statement object run again, and one built anew per transaction).
``session_reset`` compares the same tenant session with and without the session reset (the tenant's entry travels
with the first statement in both). Rounds alternate baseline and candidate (ABBA) so that drift cancels; the ratio
is taken per pair of neighbouring rounds and summarized by bench/spread.py. Round trips per transaction are counted
on the wire (tests/support/pg_wire.py). Nothing is asserted.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import uuid
from collections.abc import Callable

from sqlalchemy import create_engine, func, select, text
from sqlalchemy.orm import Session

from bench.common import RESULTS_DIR, env_int, migrated_database
from bench.spread import summarize
from tests.support.pg_wire import counting_queries
from worker.db.engine import get_engine
from worker.db.models import Organization, TestSet
from worker.db.prefixed_connection import PrefixedConnection
from worker.db.session import tenant_session
from worker.dev.provision import ProvisionedDatabase

TRANSACTIONS = env_int("BENCH_DB_TRANSACTIONS", 400)
PAIRS = env_int("BENCH_DB_PAIRS", 12)
SQL = text("select count(*) from test_set where organization_id = :o")


def _orm(org: uuid.UUID):  # type: ignore[no-untyped-def]
    return select(func.count()).select_from(TestSet).where(TestSet.organization_id == org)


class _ConnectionWithoutReset(PrefixedConnection):
    """The worker's connection with the tenant's entry still sent with the first statement, but no session reset."""

    def returned_to_pool(self) -> None:
        super().returned_to_pool()
        self.reset_due = False


def _rate(transaction: Callable[[], object]) -> float:
    started = time.perf_counter()
    for _ in range(TRANSACTIONS):
        transaction()
    return TRANSACTIONS / (time.perf_counter() - started)


def _paired(baseline: Callable[[], object], candidate: Callable[[], object]) -> dict:
    _rate(baseline), _rate(candidate)  # warm-up: pools, plan caches, SQLAlchemy's statement cache
    ratios, base_rates, cand_rates = [], [], []
    for pair in range(PAIRS):
        order = (baseline, candidate) if pair % 2 == 0 else (candidate, baseline)  # ABBA
        rates = {fn: _rate(fn) for fn in order}
        base_rates.append(rates[baseline])
        cand_rates.append(rates[candidate])
        ratios.append(rates[candidate] / rates[baseline])
    return {"baseline_per_s": round(statistics.median(base_rates)),
            "tenant_per_s": round(statistics.median(cand_rates)), "ratio": summarize(ratios)}


def _round_trips(db: ProvisionedDatabase, org: uuid.UUID) -> dict:
    with counting_queries(db.runtime_url) as wire:
        tenant_engine = get_engine(wire.url(db.runtime_url), pool_size=1, max_overflow=0, pool_timeout=30)
        plain_engine = create_engine(wire.url(db.admin_url), pool_size=1, max_overflow=0)
        counts = {}
        for name, run in (("baseline", lambda: _plain(plain_engine, org, SQL)),
                          ("tenant", lambda: _tenant(tenant_engine, org, SQL))):
            run()  # the connection's one-time costs (connect, tenant key) are not per transaction
            wire.take()
            run()
            counts[name] = len(wire.take())
        plain_engine.dispose()
    return counts


def _plain(engine, org: uuid.UUID, statement) -> object:  # type: ignore[no-untyped-def]
    with Session(engine) as db, db.begin():
        return db.scalar(statement, {"o": org}) if statement is SQL else db.scalar(statement)


def _tenant(engine, org: uuid.UUID, statement) -> object:  # type: ignore[no-untyped-def]
    with tenant_session(org, None, engine=engine) as db:
        return db.scalar(statement, {"o": org}) if statement is SQL else db.scalar(statement)


def database_benchmark(db: ProvisionedDatabase) -> dict:
    owner = create_engine(db.owner_url)
    org = uuid.uuid4()
    with tenant_session(org, None, engine=owner) as session:
        session.add(Organization(id=org, name="bench"))
        session.flush()
        session.add_all([TestSet(organization_id=org, name=f"s{i}") for i in range(20)])
    owner.dispose()
    plain = create_engine(db.admin_url, pool_size=5, max_overflow=0)  # SQLAlchemy's defaults: no pre-ping, rollback
    tenant = get_engine(db.runtime_url, pool_size=5, max_overflow=0, pool_timeout=30)
    no_reset = get_engine(db.runtime_url, pool_size=5, max_overflow=0, pool_timeout=30,
                          connection_factory=_ConnectionWithoutReset)
    orm = _orm(org)
    results = {
        "sql_text": _paired(lambda: _plain(plain, org, SQL), lambda: _tenant(tenant, org, SQL)),
        "orm_select": _paired(lambda: _plain(plain, org, orm), lambda: _tenant(tenant, org, orm)),
        # The statement built anew for every transaction, as most code does: neither side reuses a cache key.
        "orm_select_built_each_time": _paired(lambda: _plain(plain, org, _orm(org)),
                                              lambda: _tenant(tenant, org, _orm(org))),
        "session_reset": _paired(lambda: _tenant(no_reset, org, SQL), lambda: _tenant(tenant, org, SQL)),
        "round_trips_per_transaction": _round_trips(db, org),
    }
    plain.dispose()
    return results


def main() -> int:
    with migrated_database() as db:
        results = database_benchmark(db)
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / "database.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
