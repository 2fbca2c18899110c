"""The one way to reach this process's settings: ``get_settings()``, validated once from the environment."""

from __future__ import annotations

from functools import cache

from config import Settings, load_settings

APP_SCOPE = "app"


@cache
def get_settings(scope: str | None = None) -> Settings:
    """Every variable validated (the default), or only those of one scope of config.spec.SCOPES.

    ``get_settings(APP_SCOPE)`` is what the Celery app and producers read: a web process that imports worker.app
    to send tasks must not fail over a worker-only variable. The launcher (`python -m config check`) validates
    everything before a worker starts. Tests that change the environment call ``get_settings.cache_clear()``.
    """
    return load_settings(scopes=None if scope is None else (scope,))
