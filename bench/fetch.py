"""`python -m bench.fetch`: task throughput with the atomic fetch (worker/delivery/fetch.py) against kombu's BRPOP.

The candidate is the product worker app, the baseline the same app with ``atomic_fetch = False``
(bench/worker_app_brpop.py), both started as `celery -A <app> worker` with the launcher's argv at the image
defaults and measured the way bench.tenancy measures (`session`: both up, batches in ABBA order drained at the
worker's own pace, CPU per task of the worker tree and Redis). Prints the per-pair ratios' summaries; nothing is
asserted. Sizes: bench.tenancy's BENCH_TENANCY_* variables.
"""

from __future__ import annotations

import dataclasses
import json
import sys

from bench import tenancy
from worker.message_guard.transport import GuardedChannel, GuardedTransport


class BrpopGuardedChannel(GuardedChannel):
    atomic_fetch = False


class BrpopGuardedTransport(GuardedTransport):
    Channel = BrpopGuardedChannel


def main() -> int:
    def kinds(all_kinds: dict[str, tenancy.Kind]) -> tuple[tenancy.Kind, tenancy.Kind]:
        direct = all_kinds["direct"]
        take = dataclasses.replace(direct, name="take", command=tenancy.celery_command("bench.worker_app"), env=None)
        brpop = dataclasses.replace(take, name="brpop", command=tenancy.celery_command("bench.worker_app_brpop"))
        return take, brpop

    results = tenancy.compare_in_sessions(kinds, ("take", "brpop"))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
