"""The bare Celery worker app of bench.tenancy: ``celery -A bench.bare_app worker``."""

from bench.bare import create_bare_app
from config import load_settings

app = create_bare_app(load_settings(scopes=("app",)))

__all__ = ["app"]
