"""`make run`: the worker with Flower, on embedded Redis and PostgreSQL when none is configured.

With BROKER_URL / DATABASE_URL set, those are used as they are. Otherwise the machine's Redis and
PostgreSQL on the default ports are used if they answer, else embedded ones start under `.run/`; a
development database with an owner and a runtime role is created once, migrated and filled with demo
data. Then entrypoint.sh starts the worker and Flower in the foreground.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

from config import mask_url
from worker.dev.provision import provision_database
from worker.dev.services import postgres_admin_url, redis_base_url

ROOT = Path(__file__).resolve().parents[2]
RUN_DIR = Path(os.environ.get("WORKER_DEV_RUN_DIR") or ROOT / ".run")
STATE = RUN_DIR / "dev-database.json"


def development_database(admin_url: str) -> dict[str, str]:
    """Reuse the database made by an earlier `make run` against the same server, else make one."""
    if STATE.exists():
        state = json.loads(STATE.read_text())
        if state.get("admin_url") == admin_url and _database_exists(admin_url, state["name"]):
            return state
    db = provision_database(admin_url, prefix="twdev")
    state = {"admin_url": admin_url, "name": db.name, "owner_url": db.owner_url, "runtime_url": db.runtime_url}
    STATE.write_text(json.dumps(state))
    STATE.chmod(0o600)
    return state


def _database_exists(admin_url: str, name: str) -> bool:
    from sqlalchemy import create_engine, text

    engine = create_engine(admin_url)
    try:
        with engine.connect() as conn:
            return bool(conn.execute(text("select 1 from pg_database where datname = :n"), {"n": name}).scalar())
    finally:
        engine.dispose()


def main() -> int:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if not env.get("BROKER_URL"):
        base = redis_base_url(RUN_DIR)
        env["BROKER_URL"], env["CELERY_RESULT_BACKEND"] = f"{base}/0", env.get("CELERY_RESULT_BACKEND") or f"{base}/1"
    if not env.get("DATABASE_URL"):
        state = development_database(postgres_admin_url(RUN_DIR))
        env["DATABASE_URL"], env["MIGRATION_DATABASE_URL"] = state["runtime_url"], state["owner_url"]
    env.setdefault("ENABLE_FLOWER", "yes")
    if not env.get("FLOWER_BASIC_AUTH"):
        env["FLOWER_BASIC_AUTH"] = f"admin:{secrets.token_urlsafe(12)}"
    env.setdefault("CELERY_WORKER_CONCURRENCY", "2")
    env.setdefault("WORKER_HEALTH_DIR", str(RUN_DIR / "health"))
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)

    os.environ.update(env)
    from worker.db.demo_data import create_demo_data, format_summary
    from worker.db.migrate import migrate

    migration_url = env.get("MIGRATION_DATABASE_URL") or env["DATABASE_URL"]
    # One role for both is a development shortcut that migrate() refuses unless told; make run is development.
    migrate(migration_url, env["DATABASE_URL"], allow_owner_runtime=migration_url == env["DATABASE_URL"])
    summary = create_demo_data(env.get("MIGRATION_DATABASE_URL") or env["DATABASE_URL"])
    print(f"broker:   {mask_url(env['BROKER_URL'])}\ndatabase: {mask_url(env['DATABASE_URL'])}")
    print("demo data:\n" + format_summary(summary))
    print(f"Flower:   http://127.0.0.1:{env.get('FLOWER_PORT', '5555')}/  (basic auth {env['FLOWER_BASIC_AUTH']})")
    print("Send a task from another shell (organization ids are listed above):\n"
          f"  BROKER_URL={env['BROKER_URL']} CELERY_RESULT_BACKEND={env['CELERY_RESULT_BACKEND']} \\\n"
          "  .venv/bin/python -m worker send rhesis.backend.tasks.count_test_sets --organization-id <id>",
          flush=True)
    # A child, not exec: the embedded servers are stopped by this process's exit handlers. Its own session,
    # so that Ctrl-C reaches it once, through us (the terminal would also signal it directly, and a second
    # SIGINT turns Celery's warm shutdown into a cold one).
    worker = subprocess.Popen(["bash", str(ROOT / "entrypoint.sh"), "worker"], env=env, start_new_session=True)
    signal.signal(signal.SIGTERM, lambda *_: worker.send_signal(signal.SIGTERM))
    while True:
        try:
            return worker.wait()
        except KeyboardInterrupt:
            worker.send_signal(signal.SIGINT)


if __name__ == "__main__":
    sys.exit(main())
