"""``CELERY_WORKER_MAX_MEMORY_PER_CHILD=auto``: the per-child memory bound from the container's memory limit.

Same arithmetic as the chart used to do in ``_helpers.tpl`` (``tw.pools``): the limit in KiB, times 3/4 (room for
the main process and for a child's growth between two checks), divided by the concurrency; only for the prefork
pool (the other pools run tasks in the main process, where Celery ignores the bound); capped at the option's
maximum; 0 (unlimited) when the container has no memory limit.
"""

from __future__ import annotations

from pathlib import Path

# cgroup v2, then v1: the first file that exists holds the container's limit.
CGROUP_LIMIT_FILES = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
# cgroup v1 writes "no limit" as a huge number (PAGE_COUNTER_MAX pages, about 2**63); nothing real is that big.
UNLIMITED_ABOVE = 1 << 60
SAFETY_NUMERATOR, SAFETY_DENOMINATOR = 3, 4


def memory_limit_bytes(files: tuple[Path, ...] = CGROUP_LIMIT_FILES) -> int:
    """The container's memory limit in bytes; 0 when there is none (or no cgroup file can be read)."""
    for path in files:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text == "max" or not text.isdigit() or int(text) >= UNLIMITED_ABOVE:
            return 0
        return int(text)
    return 0


def auto_max_memory_per_child(limit_bytes: int, concurrency: int, pool: str, maximum: int) -> int:
    """KiB after which a prefork child is replaced; 0 means unlimited."""
    if not limit_bytes or pool != "prefork":
        return 0
    limit_kib = limit_bytes // 1024
    return min(limit_kib * SAFETY_NUMERATOR // (SAFETY_DENOMINATOR * concurrency), maximum)
