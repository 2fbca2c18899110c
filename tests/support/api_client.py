"""A small HTTP client for the API service in tests: plain urllib, loopback only, plus a server-sent-events reader."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from tests.support.processes import LoggedProcess
from tests.support.secret_watch import register_environment, register_output_file

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Event:
    name: str
    data: Any
    id: str | None = None


class ApiClient:
    """``token`` goes into ``Authorization: Bearer``; ``headers`` into every request (a host's own scheme)."""

    def __init__(self, base_url: str, token: str | None = None, headers: dict[str, str] | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.headers = dict(headers or {})

    def as_token(self, token: str | None) -> ApiClient:
        return ApiClient(self.base_url, token, self.headers)

    def _request(self, method: str, path: str, headers: dict[str, str] | None = None) -> urllib.request.Request:
        request = urllib.request.Request(self.base_url + path, method=method)  # noqa: S310 - loopback only
        if self.token is not None:
            request.add_header("Authorization", f"Bearer {self.token}")
        for name, value in {**self.headers, **(headers or {})}.items():
            request.add_header(name, value)
        return request

    def call(self, method: str, path: str, headers: dict[str, str] | None = None, timeout: float = 30) -> Answer:
        try:
            with urllib.request.urlopen(self._request(method, path, headers), timeout=timeout) as response:  # noqa: S310
                return Answer(response.status, dict(response.headers), response.read())
        except urllib.error.HTTPError as exc:
            return Answer(exc.code, dict(exc.headers), exc.read())

    def get(self, path: str) -> Answer:
        return self.call("GET", path)

    def post(self, path: str) -> Answer:
        return self.call("POST", path)

    def events(self, path: str, timeout: float = 120) -> Iterator[Event]:
        """The stream's events as they arrive; ends when the server closes it (comments and retry lines skipped)."""
        with urllib.request.urlopen(self._request("GET", path), timeout=timeout) as response:  # noqa: S310
            assert response.headers.get("Content-Type", "").startswith("text/event-stream"), response.headers
            name, data, event_id = "message", [], None
            for raw in response:
                line = raw.decode().rstrip("\r\n")
                if not line:
                    if data:
                        yield Event(name, json.loads("\n".join(data)), event_id)
                    name, data, event_id = "message", [], None
                elif line.startswith(":"):
                    continue
                else:
                    key, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    if key == "event":
                        name = value
                    elif key == "data":
                        data.append(value)
                    elif key == "id":
                        event_id = value


@dataclass
class ApiProcess(LoggedProcess):
    url: str
    proc: subprocess.Popen
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    stop_timeout: ClassVar[float] = 30


def start_api_process(env: dict[str, str], run_dir: Path, port: int, extra_args: tuple[str, ...] = (),
                      timeout: float = 60) -> ApiProcess:
    """``python -m worker api`` as a real process; returns once /healthz answers."""
    name = f"api-{secrets.token_hex(3)}"
    log_path = run_dir / f"{name}.log"
    # A health directory of its own: the role file the API writes must not replace a worker's.
    full_env = {**os.environ, "WORKER_HEALTH_DIR": str(run_dir / f"{name}-health"), **env, "PYTHONPATH": str(ROOT)}
    register_environment(full_env, "api service")
    register_output_file(log_path, "api service")
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "worker", "api", "--port", str(port), *extra_args], cwd=ROOT,
                                env=full_env, stdout=log_file, stderr=subprocess.STDOUT)
    api = ApiProcess(f"http://127.0.0.1:{port}", proc, log_path, full_env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"api exited with {proc.returncode}:\n{api.log()[-4000:]}")
        try:
            if ApiClient(api.url).get("/healthz").status == 200:
                return api
        except OSError:
            pass  # not listening yet
        time.sleep(0.2)
    api.stop()
    raise RuntimeError(f"api did not answer in {timeout}s:\n{api.log()[-4000:]}")
