"""``sweep``: settle stalled test runs of every organization once (docs/execution.md)."""

from __future__ import annotations

import argparse
import json


def sweep(args: argparse.Namespace) -> int:
    from worker.cli.database_commands import _one_line_errors

    def body() -> int:
        from worker.app import app
        from worker.execution.settings import execution_settings
        from worker.execution.sweeper import sweep as sweep_runs

        stall = args.stall_seconds if args.stall_seconds is not None else execution_settings().stall_seconds
        print(json.dumps(sweep_runs(app, stall).as_json()))
        return 0

    return _one_line_errors("sweep", body)


def demo_endpoint(args: argparse.Namespace) -> int:
    from worker.dev.demo_endpoint import serve

    return serve(args.port, args.latency)
