"""Process ids of this machine; stdlib only, so that the cheap ``healthcheck`` may import it."""

from __future__ import annotations

import os


def pid_exists(pid: int) -> bool:
    """Whether a process with this id exists, also one owned by another user or a zombie not yet reaped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True
