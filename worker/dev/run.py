"""`make run`: the worker with Flower and the API, on embedded Redis and PostgreSQL when none is configured.

With BROKER_URL / DATABASE_URL set, those are used as they are (CELERY_RESULT_BACKEND defaults to the broker's
server, next database). Otherwise the machine's Redis and PostgreSQL on the default ports are used if they
answer, else embedded ones start under `.run/` (WORKER_DEV_RUN_DIR); WORKER_DEV_EMBEDDED=1 always starts the
embedded ones. A development database with an owner and a runtime role is created once per server, migrated and
filled with demo data whose endpoints point at the demo endpoint (`python -m worker demo-endpoint`, started on a free
port). The connection settings go to `.run/env` for other shells, the API's URL, a token of a demo user and a demo
configuration to `.run/api.env`; then entrypoint.sh starts the worker and Flower in the foreground, and the API
(`entrypoint.sh api`, on API_PORT) beside them. Ctrl-C: warm shutdown of the worker, the API and the demo endpoint
stop, then the embedded servers.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

from sqlalchemy.exc import OperationalError

from config import ConfigError, load_settings, mask_url
from worker.dev.environment import DevEnvironment, plan, write_shell_env
from worker.dev.provision import development_database, write_private_file
from worker.dev.services import LOCAL_HOST, free_port, postgres_admin_url, redis_base_url, stop_embedded_servers

ROOT = Path(__file__).resolve().parents[2]
EX_USAGE = 64
EX_FAILURE = 1
EX_INTERRUPTED = 130


def run_dir() -> Path:
    return Path(os.environ.get("WORKER_DEV_RUN_DIR") or ROOT / ".run")


def main() -> int:
    directory = run_dir()
    try:
        dev = plan(os.environ, directory)  # before anything starts: a bad setting must not leave servers behind
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EX_USAGE
    signals = _Signals()
    try:
        return _run(dev, directory, signals)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EX_USAGE
    except OperationalError as exc:
        # The driver's message names host and database, never the password.
        print(f"make run: database unavailable: {' '.join(str(exc.orig).split())}", file=sys.stderr)
        return EX_FAILURE
    except KeyboardInterrupt:
        print("make run: interrupted before the worker started", file=sys.stderr)
        return EX_INTERRUPTED
    finally:
        # After the worker has exited: its warm shutdown still needs the broker and the database.
        signals.stop_helpers()
        stop_embedded_servers()


def _run(dev: DevEnvironment, directory: Path, signals: _Signals) -> int:
    from worker.db.demo_data import create_demo_data, format_summary
    from worker.db.migrate import MigrationError, migrate

    directory.mkdir(parents=True, exist_ok=True)
    env = dev.env
    if dev.start_redis:
        base = redis_base_url(directory)
        env["BROKER_URL"], env["CELERY_RESULT_BACKEND"] = f"{base}/0", f"{base}/1"
    if dev.provision_database:
        state = development_database(postgres_admin_url(directory), directory / "dev-database.json")
        env["DATABASE_URL"], env["MIGRATION_DATABASE_URL"] = state["runtime_url"], state["owner_url"]
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)
    settings = load_settings(env)
    os.environ.update(env)

    endpoint_port = free_port()
    _start(signals, [sys.executable, "-m", "worker", "demo-endpoint", "--port", str(endpoint_port)], env)
    try:
        # One role for both is a development shortcut that migrate() refuses unless told; make run is development.
        migrate(settings.migration_url, settings.database_url,
                allow_owner_runtime=settings.migration_url == settings.database_url)
        summary = create_demo_data(settings.migration_url, endpoint_url=f"http://{LOCAL_HOST}:{endpoint_port}/chat")
    except MigrationError as exc:
        print(f"make run: {exc}", file=sys.stderr)
        return EX_FAILURE
    env_file = directory / "env"
    write_shell_env(env_file, env)
    api_file = directory / "api.env"
    api_url = f"http://{LOCAL_HOST}:{settings.api_port}"
    write_api_env(api_file, api_url, settings.api_token_secret)

    flower_auth = env["FLOWER_BASIC_AUTH"] if dev.generated_flower_auth else "FLOWER_BASIC_AUTH as set"
    shown_env, python = _shown(env_file), _shown(Path(sys.executable))
    print(f"broker:   {mask_url(settings.broker_url)}\n"
          f"results:  {mask_url(settings.celery_result_backend)}\n"
          f"database: {mask_url(settings.database_url)}")
    print("demo data:\n" + format_summary(summary))
    if settings.enable_flower:
        print(f"Flower:   http://127.0.0.1:{settings.flower_port}/  (basic auth {flower_auth})")
    print(f"connection settings for other shells: {shown_env} (mode 0600; `set -a; . {shown_env}; set +a` "
          "loads them)\n"
          "Send a task from another shell (organization ids are listed above):\n"
          f"  (set -a; . {shown_env}; exec {python} -m worker send rhesis.backend.tasks.count_test_sets "
          "--organization-id <id>)\n"
          f"Execute a demo test configuration (docs/execution.md; the demo endpoint answers on port {endpoint_port}):\n"
          f"  (set -a; . {shown_env}; exec {python} -m worker send rhesis.backend.tasks.execute_test_configuration "
          "<configuration id> --organization-id <id>)\n"
          f"API:      {api_url}/docs (docs/api.md); {_shown(api_file)} holds API_URL, API_TOKEN (Alice of Globex Bank) "
          "and CONFIGURATION_ID\n"
          "Execute the demo configuration through the API and follow its run:\n"
          f"  {api_curl(_shown(api_file))}", flush=True)

    # The API in its own health directory: the role file it writes there would stand for the worker's.
    _start(signals, ["bash", str(ROOT / "entrypoint.sh"), "api"],
           {**env, "WORKER_HEALTH_DIR": str(directory / "health-api")})
    # A child, not exec: the embedded servers are stopped after it exits. Its own session, so that Ctrl-C
    # reaches it once, through us (the terminal would also signal it directly, and a second SIGINT turns
    # Celery's warm shutdown into a cold one).
    worker = subprocess.Popen(["bash", str(ROOT / "entrypoint.sh"), "worker"], env=env, start_new_session=True)
    signals.worker = worker
    while True:
        try:
            return worker.wait()
        except KeyboardInterrupt:
            worker.send_signal(signal.SIGINT)


def _start(signals: _Signals, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    """A helper process beside the worker (the API, the demo endpoint), in its own session: make run stops it."""
    helper = subprocess.Popen(argv, env=env, start_new_session=True)
    signals.helpers.append(helper)
    return helper


def write_api_env(path: Path, api_url: str, keys: tuple[str, ...]) -> None:
    """API_URL, a token of Alice of Globex Bank (demo data) and Globex's "Account support" configuration, as lines a
    POSIX shell can source (mode 0600: the token is a credential)."""
    from worker.api.tokens import mint
    from worker.db.demo_data import demo_id

    token = mint(keys, demo_id("globex", "organization"), demo_id("globex", "user", "alice"))
    configuration = demo_id("globex", "test_configuration", "Account support")
    lines = [f"# Written by `make run`: the API beside it. Another shell: . {shlex.quote(str(path))}",
             f"API_URL={shlex.quote(api_url)}", f"API_TOKEN={shlex.quote(token)}", f"CONFIGURATION_ID={configuration}"]
    write_private_file(path, "\n".join(lines) + "\n")


def api_curl(api_file: str) -> str:
    """One line for a shell: execute the demo configuration through the API, then follow its run's events."""
    auth = '-H "Authorization: Bearer $API_TOKEN"'
    run_id = """python3 -c 'import json, sys; print(json.load(sys.stdin)["test_run_id"])'"""
    return (f'(. {api_file} && run=$(curl -fsS -X POST {auth} "$API_URL/test_configurations/$CONFIGURATION_ID/execute")'
            f' && echo "$run" && curl -fsSN {auth} "$API_URL/test_runs/$(echo "$run" | {run_id})/events")')


class _Signals:
    """SIGTERM and SIGHUP (terminal closed) stop the worker warmly once it runs; before that they interrupt the
    set-up like Ctrl-C, so that the servers started so far are stopped too."""

    def __init__(self) -> None:
        self.worker: subprocess.Popen | None = None
        self.helpers: list[subprocess.Popen] = []
        for signum in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self._handle)

    def stop_helpers(self, timeout: float = 15) -> None:
        for helper in self.helpers:
            if helper.poll() is None:
                helper.send_signal(signal.SIGTERM)
        for helper in self.helpers:
            try:
                helper.wait(timeout)
            except subprocess.TimeoutExpired:
                helper.kill()
                helper.wait(5)
        self.helpers.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.worker is None:
            raise KeyboardInterrupt
        self.worker.send_signal(signal.SIGTERM)


def _shown(path: Path) -> str:
    """A path as the user can type it where they ran make run: relative below the current directory (symlinks
    kept: .venv/bin/python is one). Always with a slash, since `. env` would search PATH."""
    absolute = os.path.abspath(path)
    relative = os.path.relpath(absolute)
    shown = absolute if relative.startswith("..") else relative
    return shlex.quote(shown if "/" in shown else f"./{shown}")


if __name__ == "__main__":
    sys.exit(main())
