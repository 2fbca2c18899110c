"""Alembic migrations of the tenant schema (a package so that env.py ships with the wheel)."""
