"""``healthcheck`` (cheap: no Celery, no broker) and ``drain`` (the preStop hook)."""

from __future__ import annotations

import argparse


def healthcheck(args: argparse.Namespace) -> int:
    from worker.health.check import healthcheck as check

    status, line = check(ready=args.ready or args.ready_word == "ready")
    print(line)
    return status


def drain(args: argparse.Namespace) -> int:
    from config import load_settings

    settings = load_settings()  # every setting valid (exit 64 otherwise) before the app is imported
    from worker.app import app
    from worker.health.drain import drain as drain_node

    return drain_node(app, settings, args.timeout)
