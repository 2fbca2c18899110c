"""Second layer: ORM criteria that filter tenant models by the session's tenant.

Row-level security is the real boundary. This layer makes a development database without RLS (or a role
that bypasses it) still return only the tenant's rows through the ORM, and stops the ORM from writing a row
for another organization before PostgreSQL would (flushed objects, and ``insert(Model)``/``update(Model)``
statements, single- and multi-row, ORM or Core, run through a Session). Core UPDATE/DELETE on a tenant
``Table`` run through a Session are filtered like ORM ones; ``INSERT ... FROM SELECT`` into a tenant table and
tenant columns written as SQL expressions are refused, since their values are unknown before they run. Not
covered: the legacy ``bulk_*`` methods (they bypass ORM events), raw SQL (``text()``, ``exec_driver_sql``),
and anything run on a Connection instead of a Session; only RLS covers those.
"""

from __future__ import annotations

import uuid
import weakref
from contextvars import ContextVar
from typing import Any

from sqlalchemy import Alias, BindParameter, ClauseElement, Column, Table, Uuid, bindparam, event, inspect
from sqlalchemy.orm import ORMExecuteState, Session, UOWTransaction, with_loader_criteria
from sqlalchemy.sql import operators

from worker.db.models import TENANT_TABLES, Organization, TenantMixin
from worker.errors import TenantConflictError
from worker.tenant.context import Tenant

#: ``session.info`` key holding the :class:`Tenant` of a tenant-scoped session.
TENANT_INFO_KEY = "worker.db.tenant"
_TENANT_TABLE_NAMES = frozenset(TENANT_TABLES)
# Statement shape (cache key) -> its top-level tenant tables and their tenant column. Plain dict operations, so
# threads of a thread-pool worker can share it without a lock.
_TOP_LEVEL_TABLES: dict[Any, tuple[tuple[Table, str], ...]] = {}
_TOP_LEVEL_CACHE_SIZE = 2000
# Statement object -> the same statement with the loader criteria, when nothing else had to be added. A statement
# run again (a module-level query, a loop) would otherwise get a new object each time, and SQLAlchemy works out a new
# object's cache key anew: about 40 µs per ORM statement that a plain Session does not pay.
_FILTERED: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


# The organization of the statement being executed on this thread (or asyncio task). The loader criteria below are
# built once per process and read it when the statement's parameters are made, inside the same execute call, right
# after ``_filter_by_tenant`` set it: building two ``with_loader_criteria`` lambdas per statement cost more CPU than
# the query.
_STATEMENT_ORGANIZATION: ContextVar[uuid.UUID | None] = ContextVar("worker_db_statement_organization", default=None)


def _statement_organization() -> uuid.UUID:
    org = _STATEMENT_ORGANIZATION.get()
    if org is None:  # criteria reached a statement that no tenant session prepared: match no row
        return uuid.UUID(int=0)
    return org


_ORGANIZATION = bindparam("worker_tenant_organization", callable_=_statement_organization, type_=Uuid())
_LOADER_CRITERIA = (
    with_loader_criteria(TenantMixin, lambda cls: cls.organization_id == _ORGANIZATION, include_aliases=True),
    with_loader_criteria(Organization, lambda cls: cls.id == _ORGANIZATION, include_aliases=True),
)


def session_tenant(session: Session) -> Tenant | None:
    return session.info.get(TENANT_INFO_KEY)


def _filter_by_tenant(state: ORMExecuteState) -> None:
    tenant = session_tenant(state.session)
    if tenant is None or tenant.organization_id is None:
        return
    # Lazy and column loads inherit the criteria from the statement that loaded the parent; the organization in
    # them is this session's (another session may have run a statement on this thread since).
    if state.is_column_load or state.is_relationship_load:
        _STATEMENT_ORGANIZATION.set(uuid.UUID(tenant.organization_id))
        return
    if state.is_insert or state.is_update:
        _refuse_foreign_values(state, tenant.organization_id)
    if not (state.is_select or state.is_update or state.is_delete):
        return
    org = uuid.UUID(tenant.organization_id)
    if (state.is_update or state.is_delete) and not state.is_orm_statement:
        # Core UPDATE/DELETE on a Table: loader criteria need an entity, so filter the target directly.
        table = state.statement.table
        column = _tenant_column(table)
        if column is not None:
            state.statement = state.statement.where(table.c[column] == org)
        return
    _STATEMENT_ORGANIZATION.set(org)
    original = state.statement
    statement = _FILTERED.get(original)
    if statement is None:
        statement = original.options(*_LOADER_CRITERIA)
        extra = _top_level_predicates(original, statement, org)
        if extra:
            statement = statement.where(*extra)
        else:
            # Tenant-independent (the loader criteria read the organization when parameters are made): a statement
            # object run again gets the same filtered object, whose cache key SQLAlchemy has already worked out.
            _FILTERED[original] = statement
    state.statement = statement


def _top_level_predicates(original: Any, statement: Any, org: uuid.UUID) -> list[Any]:
    """Predicates on the tenant tables among ``statement``'s final FROM list.

    Loader criteria cover entities named in the columns, select_from() and joins, but not a table that only the
    WHERE clause mentions (``select(func.count()).where(Test.prompt == ...)``). Filter such top-level tables
    directly, and only those that the loader criteria leave unfiltered (``_covered_by_loader_criteria``). Tables
    inside joins are left to the loader criteria, which put them in the ON clause and so keep outer joins outer.

    ``get_final_froms()`` compiles the statement, uncached: about 1.5 ms, ten times the rest of a one-query
    transaction. The answer depends only on the statement's shape, so it is kept per cache key, for shapes whose
    tenant FROM entries are plain tables (the same objects in every statement of that shape); an alias is made
    anew for each statement, so a shape with one is worked out every time.
    """
    final_froms = getattr(statement, "get_final_froms", None)  # absent on unions and from_statement()
    if final_froms is None:
        return []
    cache_key = original._generate_cache_key()
    cache_key = None if cache_key is None else cache_key.key  # the shape; the bound values are left out
    if cache_key is not None:
        tables = _TOP_LEVEL_TABLES.get(cache_key)
        if tables is not None:
            return [table.c[column] == org for table, column in tables]
    covered = _covered_by_loader_criteria(statement)
    froms = [(from_, column) for from_ in final_froms()
             if (column := _tenant_column(from_.element if isinstance(from_, Alias) else from_)) is not None
             and from_._deannotate() not in covered]
    if cache_key is not None and all(isinstance(from_, Table) for from_, _column in froms):
        if len(_TOP_LEVEL_TABLES) >= _TOP_LEVEL_CACHE_SIZE:
            _TOP_LEVEL_TABLES.clear()  # a program has far fewer shapes; this only bounds one that builds SQL ad hoc
        _TOP_LEVEL_TABLES[cache_key] = tuple(froms)
    return [from_.c[column] == org for from_, column in froms]


def _covered_by_loader_criteria(statement: Any) -> set[Any]:
    """The FROM entries that the loader criteria already filter in the statement's own WHERE clause.

    Read off the statement as the ORM compiles it (its top-level WHERE, not a subquery's): a predicate
    ``<entry>.<tenant column> = :worker_tenant_organization`` there makes a second one for that entry redundant, and
    each costs about 50 µs of CPU per statement (building, caching and binding it). Uncached like
    ``get_final_froms()``, so worked out once per statement shape.
    """
    compile_state = statement.compile().compile_state
    where = getattr(getattr(compile_state, "statement", None), "_where_criteria", ())
    covered = set()
    for criterion in where:
        left, right = getattr(criterion, "left", None), getattr(criterion, "right", None)
        if (getattr(criterion, "operator", None) is operators.eq and isinstance(right, BindParameter)
                and right.key == _ORGANIZATION.key and isinstance(left, Column)
                and left.key == _tenant_column(left.table)):
            covered.add(left.table._deannotate())
    return covered


def _tenant_column(table: Any) -> str | None:
    """``organization_id`` (or ``id`` for ``organization``) when ``table`` is a tenant table, else None."""
    if not isinstance(table, Table) or table.schema not in (None, "public"):
        return None
    if table.name == "organization":
        return "id"
    return "organization_id" if table.name in _TENANT_TABLE_NAMES else None


def _refuse_foreign_values(state: ORMExecuteState, org: str) -> None:
    """INSERT and UPDATE statements on a tenant table may not write another organization's id.

    ORM (``insert(Model)``) and Core (``Model.__table__.update()``) statements alike; the values come from
    ``.values(...)`` (one row, several rows, or ordered), or from the parameter list of an executemany. A value
    this layer cannot read before the database does (a SQL expression, ``INSERT ... FROM SELECT``) is refused.
    """
    statement = state.statement
    table = getattr(statement, "table", None)
    column = _tenant_column(table)
    if column is None:
        return
    if getattr(statement, "select", None) is not None:  # Insert.from_select
        raise TenantConflictError(f"INSERT INTO {table.name} ... FROM SELECT cannot be checked for the tenant "
                                  "before it runs; insert the rows with values or through the ORM")
    rows: list[Any] = [getattr(statement, "_values", None) or {}]
    rows += [row for batch in getattr(statement, "_multi_values", None) or () for row in batch]
    rows.append(dict(getattr(statement, "_ordered_values", None) or ()))
    parameters = state.parameters
    rows += list(parameters) if isinstance(parameters, list | tuple) else [parameters] if parameters else []
    written: list[Any] = []
    for row in rows:
        if isinstance(row, dict):
            written += [value for key, value in row.items() if getattr(key, "key", key) == column]
        elif isinstance(row, list | tuple):  # positional multi-values row: in the table's column order
            names = [c.key for c in table.columns]
            if column in names and len(row) > names.index(column):
                written.append(row[names.index(column)])
    for value in written:
        if isinstance(value, BindParameter):
            value = value.value
        elif isinstance(value, ClauseElement):
            raise TenantConflictError(f"{table.name} statement writes {column} as a SQL expression, which cannot be "
                                      "checked for the tenant before it runs; write the value itself")
        if value is not None and not _same_org(value, org):
            raise TenantConflictError(f"{table.name} statement writes organization {value} in a session "
                                      f"of organization {org}")


def _same_org(value: Any, org: str) -> bool:
    return str(value).lower() == org


def _stamp_and_check(session: Session, flush_context: UOWTransaction, instances: Any) -> None:
    """Fill in the tenant on new rows; refuse rows (new or moved) that belong to another organization."""
    tenant = session_tenant(session)
    if tenant is None or tenant.organization_id is None:
        return
    org = tenant.organization_id
    for obj in session.new:
        if isinstance(obj, TenantMixin):
            if obj.organization_id is None:
                obj.organization_id = uuid.UUID(org)
            if tenant.user_id is not None and getattr(obj, "user_id", False) is None:
                obj.user_id = uuid.UUID(tenant.user_id)  # type: ignore[attr-defined]
            if not _same_org(obj.organization_id, org):
                raise TenantConflictError(
                    f"{type(obj).__name__} for organization {obj.organization_id} in a session of organization {org}")
        elif isinstance(obj, Organization):
            if obj.id is None:
                obj.id = uuid.UUID(org)
            if not _same_org(obj.id, org):
                raise TenantConflictError(f"organization {obj.id} created in a session of organization {org}")
    for obj in session.dirty:
        if isinstance(obj, TenantMixin) and inspect(obj).attrs.organization_id.history.has_changes():
            if not _same_org(obj.organization_id, org):
                raise TenantConflictError(
                    f"{type(obj).__name__} moved to organization {obj.organization_id} in a session of "
                    f"organization {org}")


def install() -> None:
    """Register the listeners on every Session (idempotent); they act only on sessions that carry a tenant."""
    if not event.contains(Session, "do_orm_execute", _filter_by_tenant):
        event.listen(Session, "do_orm_execute", _filter_by_tenant)
    if not event.contains(Session, "before_flush", _stamp_and_check):
        event.listen(Session, "before_flush", _stamp_and_check)


install()
