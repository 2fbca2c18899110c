"""One error shape for every answer of the API: ``{"error": {"code": ..., "message": ...}}``.

The router returns it by itself (its routes use :class:`ErrorShapedRoute`), so a host that mounts the router gets
the same shape without installing handlers; the service (:mod:`worker.api.service`) also shapes the answers that
never reach a route (an unknown path, a wrong method, an unexpected exception). Messages are fixed texts or
validated names: never a driver's message, a URL, a secret or a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from worker.errors import InvalidTenantError, TenantConflictError, TenantContextError

log = logging.getLogger("worker.api")

#: The answer for an id the caller's organization does not have, whether it exists elsewhere or nowhere.
NOT_FOUND_MESSAGE = "not found"
_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
          406: "not_acceptable", 409: "conflict", 413: "too_large", 415: "unsupported_media_type",
          422: "invalid_request", 429: "too_many_requests", 500: "internal", 503: "unavailable"}


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code: not_found, invalid_request, unauthorized, "
                                  "forbidden, unavailable, internal, method_not_allowed, ...",
                      examples=["not_found"])
    message: str = Field(description="Short human-readable text; never holds a secret or a traceback.",
                         examples=["not found"])


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ApiError(Exception):
    """An answer other than success, raised anywhere below a route (dependencies included)."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, dict(headers or {})

    def response(self) -> JSONResponse:
        return error_response(self.status, self.code, self.message, self.headers)


def not_found() -> ApiError:
    """The same 404 for an unknown id, a malformed id and another organization's id: ids cannot be probed."""
    return ApiError(404, "not_found", NOT_FOUND_MESSAGE)


def error_response(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    body = ErrorResponse(error=ErrorDetail(code=code, message=message)).model_dump()
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def validation_message(exc: RequestValidationError) -> str:
    """Where and what, never the value sent (it could be anything, a credential pasted by mistake included)."""
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(part) for part in error.get("loc", ()))
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)[:500] or "invalid request"


def _unavailable_errors() -> tuple[type[BaseException], ...]:
    # A database or broker that does not answer is the service's state, not the caller's fault: 503, and the
    # driver's message (host names, roles) stays in the log.
    from kombu.exceptions import OperationalError as KombuOperationalError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
    from sqlalchemy.exc import InterfaceError, OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeoutError

    return (OperationalError, InterfaceError, PoolTimeoutError, KombuOperationalError, RedisConnectionError,
            RedisTimeoutError)


UNAVAILABLE_ERRORS = _unavailable_errors()


def shape(exc: BaseException) -> Response | None:
    """The shaped answer for an exception a route may raise, or None for one that is not ours to answer."""
    if isinstance(exc, ApiError):
        return exc.response()
    if isinstance(exc, RequestValidationError):
        return error_response(422, "invalid_request", validation_message(exc))
    if isinstance(exc, TenantContextError | InvalidTenantError | TenantConflictError):
        # The host's current user has no usable organization (or a user id of another one): a host bug or a
        # stale session, never something to reveal details about.
        return error_response(403, "forbidden", "the current user has no usable organization")
    if isinstance(exc, UNAVAILABLE_ERRORS):
        log.warning("API answered 503: %s", type(exc).__name__)
        return error_response(503, "unavailable", "the database or the task queue is unavailable; try again later",
                              {"Retry-After": "5"})
    return None


class ErrorShapedRoute(APIRoute):
    """Routes whose errors (validation, not found, dependencies, an unavailable backend) come in the one shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def shaped(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                answer = shape(exc)
                if answer is None:
                    raise
                return answer

        return shaped


def install_error_handlers(app: FastAPI) -> None:
    """The same shape for what no route answers: unknown paths, wrong methods, unexpected exceptions (500)."""

    async def http_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        status = exc.status_code
        message = NOT_FOUND_MESSAGE if status == 404 else _CODES.get(status, "error").replace("_", " ")
        return error_response(status, _CODES.get(status, f"http_{status}"), message, exc.headers)

    async def invalid(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return error_response(422, "invalid_request", validation_message(exc))

    async def unexpected(_request: Request, exc: Exception) -> Response:
        answer = shape(exc)
        if answer is not None:
            return answer
        # The traceback goes to the log (Starlette logs it after this answer); the caller learns nothing of it.
        return error_response(500, "internal", "internal error")

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(Exception, unexpected)
