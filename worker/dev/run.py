"""`make run`: the worker with Flower, on embedded Redis and PostgreSQL when none is configured.

With BROKER_URL / DATABASE_URL set, those are used as they are (CELERY_RESULT_BACKEND defaults to the broker's
server, next database). Otherwise the machine's Redis and PostgreSQL on the default ports are used if they
answer, else embedded ones start under `.run/` (WORKER_DEV_RUN_DIR); WORKER_DEV_EMBEDDED=1 always starts the
embedded ones. A development database with an owner and a runtime role is created once per server, migrated and
filled with demo data. The connection settings go to `.run/env` for other shells, then entrypoint.sh starts the
worker and Flower in the foreground. Ctrl-C: warm shutdown of the worker, then the embedded servers stop.
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
from worker.dev.provision import development_database
from worker.dev.services import postgres_admin_url, redis_base_url, stop_embedded_servers

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

    try:
        # One role for both is a development shortcut that migrate() refuses unless told; make run is development.
        migrate(settings.migration_url, settings.database_url,
                allow_owner_runtime=settings.migration_url == settings.database_url)
        summary = create_demo_data(settings.migration_url)
    except MigrationError as exc:
        print(f"make run: {exc}", file=sys.stderr)
        return EX_FAILURE
    env_file = directory / "env"
    write_shell_env(env_file, env)

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
          "Execute a demo test configuration (docs/execution.md): start the demo endpoint, point the demo data at\n"
          "it, then send a configuration id and its organization id from the listing above:\n"
          f"  (set -a; . {shown_env}; exec {python} -m worker demo-endpoint --port 8099) &\n"
          f"  (set -a; . {shown_env}; {python} -m worker demo-data --endpoint-url http://127.0.0.1:8099/chat "
          f">/dev/null && exec {python} -m worker send rhesis.backend.tasks.execute_test_configuration "
          "<configuration id> --organization-id <id>)", flush=True)

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


class _Signals:
    """SIGTERM and SIGHUP (terminal closed) stop the worker warmly once it runs; before that they interrupt the
    set-up like Ctrl-C, so that the servers started so far are stopped too."""

    def __init__(self) -> None:
        self.worker: subprocess.Popen | None = None
        for signum in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self._handle)

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
