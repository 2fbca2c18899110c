"""The task and run API (docs/api.md): ``create_router`` for a host backend, ``create_app`` for the service.

Needs the ``api`` extra (``pip install 'tenant-worker[api]'``); :mod:`worker.api.tokens` does not.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "create_router"]


def __getattr__(name: str) -> Any:
    # FastAPI is imported only when the router or the app is asked for: `api-token` and the worker need none of it.
    if name == "create_router":
        from worker.api.router import create_router

        return create_router
    if name == "create_app":
        from worker.api.service import create_app

        return create_app
    raise AttributeError(name)
