"""Which tenant a worker message names: its top-level ``organization_id``/``user_id`` headers, nothing else.

A message can name a tenant in more places than those headers, and Celery would let each of them win somewhere:

- a nested ``headers`` dict inside the headers becomes ``task.request.headers``, which ``self.retry()``
  republishes at top level, so the retry would run as the nested dict's tenant;
- the kwargs, for producers that only send kwargs;
- the body's embedded options (the third item of a protocol 2 body), which ``fast_trace_task`` applies onto the
  request after the headers: the message guard (worker/message_guard) discards every message whose embedded
  options hold anything but Celery's own ``callbacks``/``errbacks``/``chain``/``chord``, in the consumer, before
  the task exists, so an embedded ``organization_id`` or ``headers`` never reaches a task.

Kwargs are the documented fallback when the headers name no organization. A nested dict or kwargs that name a
tenant different from the headers are a conflict: the task fails with ``TenantConflictError`` before it runs
and is not retried.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from worker.errors import InvalidTenantError
from worker.tenant.context import ORGANIZATION_HEADER, TENANT_HEADERS, USER_HEADER, Tenant, normalize_id

NESTED_HEADERS = "headers"


def _same(value: Any, expected: str | None, name: str) -> bool:
    try:
        return normalize_id(value, name) == expected
    except InvalidTenantError:
        return False


def _nested_conflict(nested: Any, top: Tenant, where: str) -> str | None:
    if not isinstance(nested, Mapping):
        return None
    for name in TENANT_HEADERS:
        value = nested.get(name)
        if value not in (None, "") and not _same(value, getattr(top, name), name):
            return (f"{where} names {name}={value!r} but the message header {name} is {getattr(top, name)!r}; "
                    "the tenant comes only from the top-level headers")
    return None


def kwargs_conflict(top: Tenant, kwargs: Mapping[str, Any]) -> str | None:
    """A kwarg tenant that differs from the headers' (only when the headers name an organization)."""
    if not top.is_set:
        return None
    for name in TENANT_HEADERS:
        value = kwargs.get(name)
        if value is not None and not _same(value, getattr(top, name), name):
            return f"message header {name}={getattr(top, name)} disagrees with kwarg {name}={value!r}"
    return None


def message_conflict(headers: Mapping[str, Any], kwargs: Mapping[str, Any]) -> str | None:
    """Why a received message names its tenant ambiguously, or None when the top-level headers are the only source.

    A malformed top-level id is not reported here: ``BaseTask.before_start`` fails it with InvalidTenantError.
    """
    try:
        top = Tenant.of(headers.get(ORGANIZATION_HEADER), headers.get(USER_HEADER))
    except InvalidTenantError:
        return None
    nested = _nested_conflict(headers.get(NESTED_HEADERS), top, "the nested `headers` dict")
    return nested or kwargs_conflict(top, kwargs)
