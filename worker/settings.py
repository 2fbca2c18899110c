"""The worker's settings, validated once per process from the environment (see `config/`)."""

from __future__ import annotations

from functools import lru_cache

from config import Settings, load_settings


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
