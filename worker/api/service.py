"""The runnable API service (``python -m worker api``): the router behind bearer-token authentication.

Authentication is pluggable: :func:`create_app` takes any FastAPI dependency that returns the current user. The
default is :func:`token_authentication`, the header-token scheme of :mod:`worker.api.tokens` (``Authorization:
Bearer tw1...``), which needs ``API_TOKEN_SECRET``; without it the service refuses to start. There is no
unauthenticated mode.
"""

# No `from __future__ import annotations`: FastAPI reads the dependency's annotations, which name a local.
import uuid
from collections.abc import Callable, Sequence
from typing import Annotated, Any

from fastapi import Depends, FastAPI
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine

from config import ConfigError, Settings
from worker.api.errors import ApiError, install_error_handlers
from worker.api.router import create_router
from worker.api.tokens import TokenUser, verify
from worker.db.models import User
from worker.db.session import tenant_session
from worker.errors import TenantConflictError

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def token_authentication(keys: Sequence[str], engine: Engine | None = None) -> Callable[..., TokenUser]:
    """A dependency: the user a valid bearer token names, if they still exist in that organization; else 401.

    The user is looked up in a tenant session of the token's organization, under row-level security: one short
    transaction per request."""
    if not keys:
        raise ConfigError("API_TOKEN_SECRET is empty; allowed: random keys of at least 32 characters "
                          "(`openssl rand -hex 32`): the API refuses to run without authentication")
    keys = tuple(keys)
    bearer = HTTPBearer(auto_error=False, scheme_name="token",
                        description="A token from `python -m worker api-token` (docs/api.md).")

    def current_user(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> TokenUser:
        if credentials is None:
            raise ApiError(401, "unauthorized", "a bearer token is required", _CHALLENGE)
        user = verify(keys, credentials.credentials)
        if user is not None:
            try:
                with tenant_session(user.organization_id, user.id, engine=engine) as db:
                    if db.get(User, uuid.UUID(str(user.id))) is not None:
                        return user
            except TenantConflictError:
                pass  # a user of another organization: the same answer as any bad token
        raise ApiError(401, "unauthorized", "the token is invalid, expired or names no user", _CHALLENGE)

    return current_user


def create_app(current_user: Callable[..., Any] | None = None, *, settings: Settings | None = None,
               celery_app: Any = None, engine: Engine | None = None, events_interval: float = 1.0) -> FastAPI:
    """The service: the router at the root, ``/healthz``, ``/openapi.json`` and ``/docs``.

    ``current_user`` defaults to the token scheme with ``settings.api_token_secret`` (``settings`` defaults to
    this process's); a ConfigError when that secret is empty.
    """
    if current_user is None:
        if settings is None:
            from worker.settings import get_settings

            settings = get_settings("api")
        current_user = token_authentication(settings.api_token_secret, engine)
    app = FastAPI(title="tenant-worker API", version=_version(),
                  description="Launch, follow and cancel test runs of the caller's organization (docs/api.md). "
                              "Every id of another organization is answered like an unknown one: 404.")
    install_error_handlers(app)
    app.include_router(create_router(current_user, celery_app=celery_app, engine=engine,
                                     events_interval=events_interval))

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        # Liveness of the process only: a database outage must not restart every API pod.
        return {"status": "ok"}

    return app


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tenant-worker")
    except PackageNotFoundError:
        return "0"
