"""Multi-tenant Celery worker: the app is ``worker.app:app``."""
