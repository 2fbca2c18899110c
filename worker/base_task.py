"""BaseTask: tenant restoration, retry policy, timing and failure logging for every task."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from celery import Task
from sqlalchemy.orm import Session

from worker.errors import PermanentTaskError, TenantConflictError, TenantContextError
from worker.logging_context import printable
from worker.tenant.context import Tenant, current_tenant, normalize_id, reset_current_tenant, set_current_tenant
from worker.tenant.message import NESTED_HEADERS, kwargs_conflict, message_conflict
from worker.tenant.propagation import ORGANIZATION_HEADER, TENANT_HEADERS, USER_HEADER, tenant_of_running_task

log = logging.getLogger("worker.task")


def _top_level_headers(request: Any) -> dict[str, Any]:
    """The tenant headers of the message itself: request attributes; for an eager call, ``apply(headers=...)``."""
    if getattr(request, "is_eager", False):
        given = getattr(request, NESTED_HEADERS, None)
        return dict(given) if isinstance(given, dict) else {}
    return {name: getattr(request, name, None) for name in TENANT_HEADERS}


def tenant_from_message(request: Any, kwargs: dict[str, Any]) -> Tenant:
    """The top-level headers' tenant; kwargs only when the headers name no organization; any second source that
    names another tenant is a TenantConflictError (see worker/tenant/message.py)."""
    headers = _top_level_headers(request)
    from_headers = Tenant.of(headers.get(ORGANIZATION_HEADER), headers.get(USER_HEADER))
    if not getattr(request, "is_eager", False):
        # request.headers is a nested `headers` dict here, if the message had one (self.retry republishes it).
        conflict = message_conflict({**headers, NESTED_HEADERS: getattr(request, NESTED_HEADERS, None)}, kwargs)
    else:
        conflict = kwargs_conflict(from_headers, kwargs)
    if conflict:
        raise TenantConflictError(conflict)
    if from_headers.is_set:
        return from_headers
    from_kwargs = Tenant.of(kwargs.get(ORGANIZATION_HEADER), kwargs.get(USER_HEADER))
    if from_headers.user_id and from_kwargs.user_id not in (None, from_headers.user_id):
        raise TenantConflictError(f"message header user_id={from_headers.user_id} disagrees with kwarg "
                                  f"user_id={from_kwargs.user_id}")
    return Tenant(from_kwargs.organization_id, from_kwargs.user_id or from_headers.user_id)


class BaseTask(Task):
    """Every product task derives from this.

    Errors a retry cannot fix (PermanentTaskError: missing tenant, invalid id, conflicting tenant,
    configuration) fail at once; anything else is retried with capped, jittered exponential backoff.
    """

    autoretry_for = (Exception,)
    dont_autoretry_for = (PermanentTaskError,)
    # None: taken from the settings (TASK_MAX_RETRIES, TASK_RETRY_BACKOFF_MAX) when the task is bound,
    # unless the task sets its own.
    max_retries = None
    retry_backoff_max = None
    retry_backoff = True
    retry_jitter = True
    track_started = True
    typing = True
    log_outcome = True  # worker.tenant.lifecycle logs "outcome=... runtime=..." for these tasks

    @classmethod
    def bind(cls, app):  # type: ignore[no-untyped-def]
        # The retry policy is the product's, not a Celery setting: it matters where tasks run, the worker process,
        # whose app is built from these same settings. App scope: producers bind tasks too.
        if cls.max_retries is None or cls.retry_backoff_max is None:
            from worker.settings import APP_SCOPE, get_settings

            settings = get_settings(APP_SCOPE)
            if cls.max_retries is None:
                cls.max_retries = settings.task_max_retries
            if cls.retry_backoff_max is None:
                cls.retry_backoff_max = settings.task_retry_backoff_max
        return super().bind(app)

    def apply_async(self, args=None, kwargs=None, task_id=None, producer=None, link=None, link_error=None,
                    shadow=None, **options):  # type: ignore[no-untyped-def]
        """Move ``organization_id``/``user_id`` kwargs into the message headers of the same names."""
        kwargs = dict(kwargs or {})
        headers = dict(options.pop("headers", None) or {})
        for name in TENANT_HEADERS:
            if kwargs.get(name) is None:
                continue
            value = normalize_id(kwargs[name], name)
            if headers.get(name) and normalize_id(headers[name], name) != value:
                raise TenantConflictError(
                    f"header {name}={headers[name]!r} disagrees with kwarg {name}={kwargs[name]!r}")
            headers[name] = value
            if not self._accepts_kwarg(name):
                kwargs.pop(name)
        return super().apply_async(args, kwargs, task_id=task_id, producer=producer, link=link,
                                   link_error=link_error, shadow=shadow, headers=headers or None, **options)

    def _accepts_kwarg(self, name: str) -> bool:
        return name in self._tenant_kwargs_taken

    @functools.cached_property
    def _tenant_kwargs_taken(self) -> frozenset[str]:
        """The tenant names the task's own signature takes (computed once, not on every call)."""
        try:
            parameters = inspect.signature(self.run).parameters
        except (TypeError, ValueError):
            return frozenset()
        return frozenset(name for name in TENANT_HEADERS if name in parameters)

    # -- execution ---------------------------------------------------------------------------------
    def before_start(self, task_id: str, args: tuple, kwargs: dict) -> None:
        """Restore the message's tenant; an eager call without one runs as its caller's tenant."""
        tenant = tenant_from_message(self.request, kwargs)
        if not tenant.is_set and getattr(self.request, "is_eager", False):
            tenant = current_tenant()
        set_current_tenant(tenant)
        self.request.organization_id = tenant.organization_id
        self.request.user_id = tenant.user_id

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        for name in TENANT_HEADERS:
            if name in kwargs and not self._accepts_kwarg(name):
                kwargs.pop(name)
        if not self.request.called_directly:
            return super().__call__(*args, **kwargs)
        # Called as a plain function inside another task (celery.map/starmap/chunks run their members
        # inline): run as the enclosing task's tenant, and leave the context as it was.
        token = set_current_tenant(tenant_of_running_task())
        try:
            return super().__call__(*args, **kwargs)
        finally:
            reset_current_tenant(token)

    def signature_from_request(self, request: Any = None, *args: Any, **kwargs: Any) -> Any:
        """The message a retry republishes: with this attempt's tenant as its top-level headers.

        Celery republishes ``request.headers``, which is a nested ``headers`` dict when the message had one;
        the retry must run as the tenant this attempt ran as, never as whatever that dict names.
        """
        request = self.request if request is None else request
        signature = super().signature_from_request(request, *args, **kwargs)
        headers = {name: value for name, value in (signature.options.get("headers") or {}).items()
                   if name not in (*TENANT_HEADERS, NESTED_HEADERS)}
        tenant = Tenant(getattr(request, ORGANIZATION_HEADER, None), getattr(request, USER_HEADER, None))
        signature.options["headers"] = {**headers, **tenant.headers()}
        return signature

    def on_failure(self, exc: BaseException, task_id: str, args: tuple, kwargs: dict, einfo: Any) -> None:
        retries = getattr(self.request, "retries", 0)
        # The error text may quote message values (an invalid header, say): one escaped line, never raw.
        log.error("task %s failed after %d retries: %s: %s", self.name, retries, type(exc).__name__,
                  printable(exc, limit=2000))

    # -- database ----------------------------------------------------------------------------------
    @contextmanager
    def get_db_session(self) -> Iterator[Session]:
        """A session that sees only the current tenant's rows; fails closed without an organization."""
        from worker.db.session import tenant_session

        tenant = current_tenant()
        if not tenant.is_set:
            raise TenantContextError(f"task {self.name} needs an organization_id but the message carries none")
        with tenant_session(tenant.organization_id, tenant.user_id) as session:
            yield session


def with_tenant_context(func: Callable[..., Any]) -> Callable[..., Any]:
    """Give a bound task a tenant-scoped ``db`` session keyword; callers never pass ``db`` themselves."""

    @functools.wraps(func)
    def wrapper(self: BaseTask, *args: Any, **kwargs: Any) -> Any:
        with self.get_db_session() as db:
            return func(self, *args, db=db, **kwargs)

    signature = inspect.signature(func)
    wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[p for name, p in signature.parameters.items() if name != "db"])
    return wrapper
