"""`python -m bench.metrics`: no-op task throughput of the product worker with /metrics off against on.

Both workers are started the way the image starts them (bench.tenancy's launcher kind, image defaults) with
METRICS_PORT unset or set, and measured the way bench.tenancy measures (`session`: both up, batches in ABBA order
drained at the worker's own pace, CPU per task of the worker tree and Redis). The tenant no-op task with tenant
headers. Prints the per-pair ratios' summaries; nothing is asserted. Sizes: bench.tenancy's BENCH_TENANCY_* variables.
"""

from __future__ import annotations

import dataclasses
import json
import sys

from bench import tenancy
from worker.dev.services import free_port


def main() -> int:
    def kinds(all_kinds: dict[str, tenancy.Kind]) -> tuple[tenancy.Kind, tenancy.Kind]:
        product = all_kinds["product"]
        metrics = dataclasses.replace(product, name="metrics_on",
                                      env={**(product.env or {}), "METRICS_PORT": str(free_port())})
        return metrics, product

    results = tenancy.compare_in_sessions(kinds, ("metrics_on", "metrics_off"))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
