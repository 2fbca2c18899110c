"""The current tenant, kept in a ContextVar.

Never on the task object: the threads and gevent pools run many requests on one task instance at once,
and a ContextVar is per thread / per greenlet.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass

from worker.errors import InvalidTenantError

# The message headers that carry the tenant (Celery turns them into task.request attributes of the same names).
ORGANIZATION_HEADER = "organization_id"
USER_HEADER = "user_id"
TENANT_HEADERS = (ORGANIZATION_HEADER, USER_HEADER)


def normalize_id(value: object, name: str) -> str | None:
    """Canonical lowercase UUID text, or None for a missing value; anything else raises InvalidTenantError."""
    if value is None or value == "":
        return None
    if isinstance(value, uuid.UUID):
        return str(value)
    try:
        return str(uuid.UUID(str(value)))
    except (ValueError, TypeError, AttributeError):
        raise InvalidTenantError(f"{name} {value!r} is not a valid UUID") from None


@dataclass(frozen=True)
class Tenant:
    organization_id: str | None
    user_id: str | None = None

    @classmethod
    def of(cls, organization_id: object, user_id: object = None) -> Tenant:
        return cls(normalize_id(organization_id, "organization_id"), normalize_id(user_id, "user_id"))

    @property
    def is_set(self) -> bool:
        return self.organization_id is not None

    def headers(self) -> dict[str, str | None]:
        """The message headers that carry this tenant; none at all when it names nobody."""
        if self.organization_id is None and self.user_id is None:
            return {}
        return {ORGANIZATION_HEADER: self.organization_id, USER_HEADER: self.user_id}


NO_TENANT = Tenant(None, None)
_current: ContextVar[Tenant] = ContextVar("current_tenant", default=NO_TENANT)


def current_tenant() -> Tenant:
    return _current.get()


def set_current_tenant(tenant: Tenant) -> Token[Tenant]:
    return _current.set(tenant)


def reset_current_tenant(token: Token[Tenant]) -> None:
    _current.reset(token)


def clear_tenant() -> None:
    _current.set(NO_TENANT)


@contextmanager
def tenant_scope(organization_id: object, user_id: object = None) -> Iterator[Tenant]:
    """Run a block as a tenant, restoring the previous one afterwards (also on errors)."""
    token = _current.set(Tenant.of(organization_id, user_id))
    try:
        yield _current.get()
    finally:
        _current.reset(token)
