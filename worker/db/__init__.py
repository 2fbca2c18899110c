"""PostgreSQL layer: models, migrations, tenant-scoped sessions (row-level security plus ORM criteria).

See docs/database.md for the design. Kept import-light: the CLI imports ``MigrationError`` from here.
"""

from __future__ import annotations


class MigrationError(RuntimeError):
    """The database or the roles are not in a state that keeps tenants apart; nothing was committed."""
