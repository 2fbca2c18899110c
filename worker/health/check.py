"""``python -m worker healthcheck [--ready]``: is this container's worker (or Flower, or the API) alive?

Cheap by design (it runs every few seconds under load and during broker outages): it reads the health files
and, in a Flower container, asks Flower's ``/healthcheck`` on loopback (in an API container the API's
``/healthz``). It never imports Celery and never talks to the broker. It reads ``WORKER_HEALTH_DIR``,
``WORKER_HEARTBEAT_MAX_AGE``, ``FLOWER_PORT``, ``FLOWER_URL_PREFIX`` and ``API_PORT`` from the environment only
(not from a ``.env`` file); defaults and rules are those of ``config/options.py``.
"""

from __future__ import annotations

import http.client
import json
import os
import time
from collections.abc import Mapping

from worker.health.files import API_PORT, HEARTBEAT, READY, ROLE, HealthFiles
from worker.pids import pid_exists


def _setting(name: str, environ: Mapping[str, str]) -> object:
    from config.options import BY_NAME

    option = BY_NAME[name]
    return option.parse(environ.get(name, option.default or ""))


def healthcheck(ready: bool = False, environ: Mapping[str, str] | None = None) -> tuple[int, str]:
    """(exit status, one line) for the heartbeat of a worker container, or Flower's answer in a Flower one."""
    from config.spec import ConfigError

    environ = os.environ if environ is None else environ
    try:
        files = HealthFiles(str(_setting("WORKER_HEALTH_DIR", environ)))
        if files.read(ROLE) == "flower":
            return flower_healthcheck(int(_setting("FLOWER_PORT", environ)), environ.get("FLOWER_URL_PREFIX", ""))
        if files.read(ROLE) == "api":
            port = files.read(API_PORT)  # the port it really listens on (--port may differ from API_PORT)
            return api_healthcheck(int(port) if port.isdigit() else int(_setting("API_PORT", environ)))
        max_age = int(_setting("WORKER_HEARTBEAT_MAX_AGE", environ))
    except ConfigError as exc:
        return 1, f"unhealthy: {exc}"
    try:
        mtime = files.path(HEARTBEAT).stat().st_mtime
    except OSError:
        return 1, (f"unhealthy: no heartbeat file {files.path(HEARTBEAT)} (the worker has not connected yet, "
                   "or has stopped)")
    pid = _heartbeat_pid(files.read(HEARTBEAT))
    if pid is not None and not process_alive(pid):
        return 1, f"unhealthy: the worker process {pid} that wrote the heartbeat is gone"
    age = int(time.time() - mtime)
    if age > max_age:
        return 1, (f"unhealthy: heartbeat is {age}s old (WORKER_HEARTBEAT_MAX_AGE={max_age}s): the consumer is "
                   "stuck, stopped, or lost the broker")
    if ready and not files.exists(READY):
        return 1, "not ready: the worker is not consuming (starting, reconnecting, draining or stopping)"
    return 0, f"healthy: heartbeat {age}s old"


def _heartbeat_pid(content: str) -> int | None:
    try:
        pid = json.loads(content).get("pid")
    except (ValueError, AttributeError):
        return None
    return pid if isinstance(pid, int) and pid > 0 else None


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    if not pid_exists(pid):
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def flower_healthcheck(port: int, prefix: str = "", timeout: float = 5.0) -> tuple[int, str]:
    path = "/" + "/".join(part for part in (prefix.strip("/"), "healthcheck") if part)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        status = connection.getresponse().status
    except OSError:
        return 1, f"unhealthy: Flower does not accept connections on port {port}"
    finally:
        connection.close()
    if status == 200:
        return 0, f"healthy: Flower answers on port {port}"
    return 1, f"unhealthy: Flower's /healthcheck answered {status}"


def api_healthcheck(port: int, timeout: float = 5.0) -> tuple[int, str]:
    """The API service's ``/healthz`` on loopback (it answers without authentication and without the database)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", "/healthz")
        status = connection.getresponse().status
    except OSError:
        return 1, f"unhealthy: the API does not accept connections on port {port}"
    finally:
        connection.close()
    if status == 200:
        return 0, f"healthy: the API answers on port {port}"
    return 1, f"unhealthy: the API's /healthz answered {status}"
