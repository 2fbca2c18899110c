"""Every environment variable the product reads, declared once.

The README table is generated from this list (``python -m config table``) and a test checks that the
README matches it. Defaults are raw strings, parsed like any value a user sets.
"""

from __future__ import annotations

import re

from config.spec import Boolean, Choice, FilePath, Integer, Option, Pattern, Text, Url, WordList

REDIS_SCHEMES = ("redis", "rediss")
DATABASE_SCHEMES = ("postgresql", "postgresql+psycopg2", "postgres")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
CERT_REQS = ("required", "optional", "none")
CERT_REQS_ALIASES = {"CERT_REQUIRED": "required", "CERT_OPTIONAL": "optional", "CERT_NONE": "none"}
_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.:\-]+$").match


class KiBOrAuto(Integer):
    """KiB, or ``auto``: computed at launch from the container's memory limit (worker/launch/memory.py)."""

    def __init__(self, minimum: int, maximum: int) -> None:
        super().__init__(minimum, maximum)
        self.allowed += ", or auto"

    def parse(self, raw: str) -> int | str:  # type: ignore[override]
        return "auto" if raw.strip().lower() == "auto" else super().parse(raw)

OPTIONS: tuple[Option, ...] = (
    # -- connections -------------------------------------------------------------------------
    Option("BROKER_URL", Url(REDIS_SCHEMES), "redis://localhost:6379/0",
           "Redis broker URL. `rediss://` enables TLS (verified by default); a `ssl_cert_reqs` "
           "query parameter (`required`, `optional`, `none` or `CERT_*`) is honoured.",
           group="connections", secret=True),
    Option("CELERY_RESULT_BACKEND", Url(REDIS_SCHEMES), "redis://localhost:6379/1",
           "Redis result backend URL; same TLS rules as `BROKER_URL`.", group="connections", secret=True),
    Option("DATABASE_URL", Url(DATABASE_SCHEMES), "postgresql://worker@localhost:5432/worker",
           "PostgreSQL URL of the runtime role (not an owner, not a superuser, no BYPASSRLS).",
           group="connections", secret=True),
    Option("MIGRATION_DATABASE_URL", Url(DATABASE_SCHEMES, optional=True), "",
           "PostgreSQL URL of the role that owns the tables and runs migrations; empty means `DATABASE_URL`.",
           group="connections", secret=True),
    Option("DATABASE_POOL_SIZE", Integer(1, 200), "5",
           "SQLAlchemy connection pool size per worker process.", group="connections"),
    Option("DATABASE_MAX_OVERFLOW", Integer(0, 200), "5",
           "Connections allowed above the pool size under burst load.", group="connections"),
    Option("DATABASE_POOL_TIMEOUT", Integer(1, 3600), "30",
           "Seconds to wait for a free pooled connection before failing.", group="connections"),
    # -- redis connection behaviour ----------------------------------------------------------
    Option("REDIS_SOCKET_TIMEOUT", Integer(1, 3600), "30",
           "Seconds a Redis read/write may block (broker and result backend).", group="redis"),
    Option("REDIS_SOCKET_CONNECT_TIMEOUT", Integer(1, 3600), "30",
           "Seconds to wait for a Redis connection to open.", group="redis"),
    Option("REDIS_RETRY_ON_TIMEOUT", Boolean(), "yes", "Retry a Redis command once after a timeout.", group="redis"),
    Option("REDIS_SOCKET_KEEPALIVE", Boolean(), "yes", "TCP keepalive on Redis sockets.", group="redis"),
    Option("REDIS_HEALTH_CHECK_INTERVAL", Integer(0, 3600), "25",
           "Seconds of idleness after which a pooled Redis connection is PINGed before use (0 = never).",
           group="redis"),
    Option("REDIS_MAX_CONNECTIONS", Integer(1, 10000), "20",
           "Upper bound of each Redis connection pool (broker and result backend).", group="redis"),
    Option("REDIS_KEY_PREFIX", Pattern(r"[A-Za-z0-9_.:\-]+", "letters, digits and _.:-"), "",
           "Prefix for every Redis key of broker and result backend, to share one Redis between deployments.",
           group="redis"),
    Option("BROKER_VISIBILITY_TIMEOUT", Integer(60, 604800), "7200",
           "Seconds before an unacknowledged message is redelivered; must exceed `TASK_TIME_LIMIT` plus the "
           "larger of `TASK_MAX_COUNTDOWN` and `TASK_RETRY_BACKOFF_MAX`.", group="redis"),
    Option("REDIS_SSL_CERT_REQS", Choice(CERT_REQS, CERT_REQS_ALIASES, optional=True), "",
           "TLS certificate verification for `rediss://` (`required`, `optional`, `none`); empty means the "
           "URL's `ssl_cert_reqs`, else `required`. Anything but `required` logs a warning.", group="tls"),
    Option("REDIS_SSL_CA_CERTS", FilePath(), "",
           "CA bundle (PEM) that signed the Redis server certificate; empty means the system CAs.", group="tls"),
    Option("REDIS_SSL_CERTFILE", FilePath(), "", "Client certificate (PEM) for mutual TLS.", group="tls"),
    Option("REDIS_SSL_KEYFILE", FilePath(), "", "Client private key (PEM) for mutual TLS.", group="tls"),
    # -- tasks ---------------------------------------------------------------------------------
    Option("TASK_TIME_LIMIT", Integer(1, 86400), "3600",
           "Hard time limit in seconds; the task's process is killed after it.", group="tasks"),
    Option("TASK_SOFT_TIME_LIMIT", Integer(1, 86400), "3300",
           "Soft time limit in seconds (raises SoftTimeLimitExceeded inside the task).", group="tasks"),
    Option("TASK_MAX_COUNTDOWN", Integer(0, 604800), "600",
           "Longest countdown/ETA (seconds) producers use, counted into the visibility-timeout check.",
           group="tasks"),
    Option("TASK_MAX_RETRIES", Integer(0, 100), "3", "Automatic retries of a failing task.", group="tasks"),
    Option("TASK_RETRY_BACKOFF_MAX", Integer(1, 86400), "600",
           "Cap, in seconds, of the exponential retry backoff (jitter is applied).", group="tasks"),
    Option("TASK_ACKS_LATE", Boolean(), "no",
           "Acknowledge after the task ran, so a killed worker's task is redelivered. Only for idempotent "
           "tasks; implies reject-on-worker-lost.", group="tasks"),
    Option("RESULT_EXPIRES", Integer(60, 31536000), "3600", "Seconds results are kept.", group="tasks"),
    Option("LOG_LEVEL", Choice(LOG_LEVELS), "INFO",
           "Log level of the product's own loggers (`worker.*`); Celery's follow `CELERY_WORKER_LOGLEVEL`.",
           group="tasks"),
    # -- worker process (read by entrypoint.sh through `python -m config worker-args`) --------
    Option("CELERY_WORKER_CONCURRENCY", Integer(1, 1000), "8", "Worker processes/threads.", group="worker"),
    Option("CELERY_WORKER_PREFETCH_MULTIPLIER", Integer(1, 1000), "4",
           "Messages reserved per process/thread.", group="worker"),
    Option("CELERY_WORKER_MAX_TASKS_PER_CHILD", Integer(0, 10000000), "1000",
           "Tasks a pool process runs before it is replaced (0 = unlimited).", group="worker"),
    Option("CELERY_WORKER_MAX_MEMORY_PER_CHILD", KiBOrAuto(0, 1073741824), "0",
           "Resident memory in KiB after which a pool process is replaced (0 = unlimited). `auto` = 3/4 of the "
           "container's memory limit (cgroup) divided by the concurrency, prefork only.", group="worker"),
    Option("CELERY_WORKER_LOGLEVEL", Choice(LOG_LEVELS), "INFO", "Celery worker log level.", group="worker"),
    Option("CELERY_WORKER_QUEUES", WordList(_QUEUE_NAME, "comma-separated queue names [A-Za-z0-9_.:-]"),
           "celery,execution", "Queues this worker consumes.", group="worker"),
    Option("CELERY_WORKER_POOL", Choice(("prefork", "threads", "gevent", "solo")), "prefork",
           "Execution pool.", group="worker"),
    Option("CELERY_WORKER_HOSTNAME", Pattern(r"[A-Za-z0-9_.%\-]+(@[A-Za-z0-9_.%\-]+)?",
                                             "a node name like worker@%h (letters, digits, _.%-, one @)"), "",
           "Worker node name; empty means Celery's default (celery@<host>).", group="worker"),
    Option("CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT", Integer(0, 86400), "60",
           "Seconds running tasks get to finish after SIGTERM before they are stopped.", group="worker"),
    Option("CELERY_WORKER_OPTS", Text("extra `celery worker` options, split like a shell"), "",
           "Extra options passed to `celery worker` as they are.", group="worker"),
    # -- health ----------------------------------------------------------------------------------
    Option("WORKER_HEALTH_DIR", Text("a writable directory"), "/tmp/worker-health",  # noqa: S108 - the one writable path of a read-only image
           "Where the worker keeps its heartbeat file and ready marker.", group="health"),
    Option("WORKER_HEARTBEAT_INTERVAL", Integer(1, 3600), "10",
           "Seconds between heartbeat file updates while the consumer is alive.", group="health"),
    Option("WORKER_HEARTBEAT_MAX_AGE", Integer(2, 86400), "60",
           "Age in seconds after which the healthcheck calls a heartbeat stale.", group="health"),
    Option("WORKER_BROKER_LOST_EXIT_AFTER", Integer(0, 86400), "300",
           "Seconds without a broker connection (also at start-up) after which the worker stops beating and exits "
           "with status 1. 0 = never (not recommended: a worker without a broker then looks healthy).",
           group="health"),
    # -- flower ----------------------------------------------------------------------------------
    Option("ENABLE_FLOWER", Choice(("yes", "no"), {"true": "yes", "1": "yes", "false": "no", "0": "no",
                                                   "": "no", "off": "no", "on": "yes"}), "no",
           "Start Flower beside the worker.", group="flower"),
    Option("FLOWER_PORT", Integer(1, 65535), "5555", "Port Flower listens on.", group="flower"),
    Option("FLOWER_BASIC_AUTH", Text("user:password[,user:password...]"), "",
           "Flower basic-auth credentials.", group="flower", secret=True),
    Option("FLOWER_UNAUTHENTICATED", Choice(("yes", "no"), {"true": "yes", "1": "yes", "false": "no", "0": "no",
                                                            "": "no"}), "no",
           "Allow Flower without authentication (logged loudly). Only for local development.", group="flower"),
)

BY_NAME: dict[str, Option] = {option.name: option for option in OPTIONS}
