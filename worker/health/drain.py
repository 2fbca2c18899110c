"""The preStop client: this node stops consuming and waits until it runs no task.

The app is passed in (the CLI imports ``worker.app``), so that nothing here imports the app module.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from celery import Celery

from worker.health.files import NODE, READY, HealthFiles


def node_name(files: HealthFiles, configured: str) -> str:
    """The node name the worker wrote at start-up, else the one Celery would give it."""
    node = files.read(NODE)
    if node:
        return node
    from celery.utils.nodenames import default_nodename, host_format

    return host_format(default_nodename(configured or None))


def drain(app: Celery, settings: Any, timeout: float | None = None) -> int:
    """Stop this node consuming and wait until it runs no task; 0 when drained in time."""
    timeout = float(settings.celery_worker_soft_shutdown_timeout if timeout is None else timeout)
    files = HealthFiles(settings.worker_health_dir)
    node = node_name(files, settings.celery_worker_hostname)
    deadline = time.monotonic() + timeout
    replies = app.control.inspect(destination=[node], timeout=5.0).active_queues() or {}
    if node not in replies:
        print(f"drain: worker {node} does not answer; nothing to drain", file=sys.stderr)
        return 1
    queues = sorted({queue["name"] for queue in replies[node]})
    for queue in queues:
        app.control.cancel_consumer(queue, destination=[node], reply=True, timeout=5.0)
    files.remove(READY)
    print(f"drain: {node} stopped consuming {', '.join(queues) or '(no queues)'}; waiting up to {timeout:g}s "
          "for its running tasks", file=sys.stderr)
    while True:
        active = (app.control.inspect(destination=[node], timeout=2.0).active() or {}).get(node)
        if active == []:
            print(f"drain: {node} runs no task", file=sys.stderr)
            return 0
        if time.monotonic() >= deadline:
            count = "an unknown number of" if active is None else str(len(active))
            print(f"drain: {node} still runs {count} task(s) after {timeout:g}s", file=sys.stderr)
            return 1
        time.sleep(1.0)
