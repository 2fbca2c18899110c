"""Every environment variable the product reads, declared once.

The README table is generated from this list (``python -m config table``) and a test checks that the
README matches it, and the typed Settings class (config/settings_fields.py) is generated from it
(``python -m config.codegen``; a test fails when it is stale). Defaults are raw strings, parsed like any value a
user sets. ``scope`` says which process needs a variable (see config.spec.SCOPES).
"""

from __future__ import annotations

import re

from config.spec import (
    Boolean,
    Choice,
    Credentials,
    DirectoryPath,
    FilePath,
    Integer,
    Option,
    Parser,
    Pattern,
    Text,
    Url,
    WordList,
)

REDIS_SCHEMES = ("redis", "rediss")
DATABASE_SCHEMES = ("postgresql", "postgresql+psycopg2", "postgres")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
CERT_REQS = ("required", "optional", "none")
CERT_REQS_ALIASES = {"CERT_REQUIRED": "required", "CERT_OPTIONAL": "optional", "CERT_NONE": "none"}
_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.:\-]+$").match
# API keys go into request headers: no whitespace or control characters that could split one.
_API_KEY = r"[!-~]+"
_MODEL_NAME = r"[A-Za-z0-9_.:/\-]+"
_FERNET_KEY = re.compile(r"[A-Za-z0-9_\-]{43}=")


class KiBOrAuto(Integer):
    """KiB, or ``auto``: computed at launch from the container's memory limit (worker/launch/memory.py)."""

    type_hint = "int | str"

    def __init__(self, minimum: int, maximum: int) -> None:
        super().__init__(minimum, maximum)
        self.allowed += ", or auto"

    def parse(self, raw: str) -> int | str:  # type: ignore[override]
        return "auto" if raw.strip().lower() == "auto" else super().parse(raw)


TENANT_SIGNING_KEY_MIN_LENGTH = 32  # worker/tenant/signing.py MIN_KEY_LENGTH; config must not import the worker


class KeyList(Parser):
    """Comma-separated keys, the first one in use, all accepted; empty means none. Reasons never quote a key."""

    type_hint = "tuple[str, ...]"

    def check_key(self, number: int, key: str) -> None:
        """Raise ValueError naming key ``number`` (never quoting it) when it is not acceptable."""

    def parse(self, raw: str) -> tuple[str, ...]:
        if not raw.strip():
            return ()
        keys = tuple(key.strip() for key in raw.split(","))
        for number, key in enumerate(keys, start=1):
            if not key:
                raise ValueError(f"key {number} is empty")
            self.check_key(number, key)
        if len(set(keys)) != len(keys):
            raise ValueError("names the same key twice")
        return keys


class SigningKeys(KeyList):
    """HMAC keys: the first signs, all verify."""

    allowed = (f"comma-separated keys of at least {TENANT_SIGNING_KEY_MIN_LENGTH} characters without whitespace "
               "or commas, all different (the first signs, all verify), or empty")

    def check_key(self, number: int, key: str) -> None:
        if any(char.isspace() for char in key):
            raise ValueError(f"key {number} contains whitespace")
        if len(key) < TENANT_SIGNING_KEY_MIN_LENGTH:
            raise ValueError(f"key {number} is shorter than {TENANT_SIGNING_KEY_MIN_LENGTH} characters")


class TokenSecrets(SigningKeys):
    """HMAC keys of the API's bearer tokens: like the tenant signing keys, and never a placeholder."""

    allowed = (f"comma-separated random keys of at least {TENANT_SIGNING_KEY_MIN_LENGTH} characters without "
               "whitespace or commas, all different (the first signs, all verify; `openssl rand -hex 32`), or empty")
    # Words of the values people paste from examples ("change-me-...", "your-secret-here"); a random key of this
    # length holds one of them by chance about once in 10^8.
    PLACEHOLDER = re.compile(r"(?i)change|replace|example|placeholder|secret|insecure|dummy|password")

    def check_key(self, number: int, key: str) -> None:
        super().check_key(number, key)
        if len(set(key)) < 8 or self.PLACEHOLDER.search(key):
            raise ValueError(f"key {number} is not a random key")


class FernetKeys(KeyList):
    """Fernet keys: the first encrypts, all decrypt."""

    allowed = ("comma-separated Fernet keys (44 characters of url-safe base64, 32 bytes; "
               "`python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`), "
               "the first encrypts, all decrypt; or empty")

    def check_key(self, number: int, key: str) -> None:
        from cryptography.fernet import Fernet  # only where the option is parsed

        # base64 decoding skips characters outside its alphabet; a stray space or letter must not pass.
        if not _FERNET_KEY.fullmatch(key):
            raise ValueError(f"key {number} is not a Fernet key")
        try:
            Fernet(key)
        except (ValueError, TypeError):
            raise ValueError(f"key {number} is not a Fernet key") from None


OPTIONS: tuple[Option, ...] = (
    # -- connections -------------------------------------------------------------------------
    Option("BROKER_URL", Url(REDIS_SCHEMES), "redis://localhost:6379/0",
           "Redis broker URL. `rediss://` enables TLS (verified by default); a `ssl_cert_reqs` "
           "query parameter (`required`, `optional`, `none` or `CERT_*`) is honoured.",
           scope="app", secret=True),
    Option("CELERY_RESULT_BACKEND", Url(REDIS_SCHEMES), "redis://localhost:6379/1",
           "Redis result backend URL; same TLS rules as `BROKER_URL`.", scope="app", secret=True),
    Option("DATABASE_URL", Url(DATABASE_SCHEMES), "postgresql://worker@localhost:5432/worker",
           "PostgreSQL URL of the runtime role (not an owner, not a superuser, no BYPASSRLS).",
           scope="app", secret=True),
    Option("MIGRATION_DATABASE_URL", Url(DATABASE_SCHEMES, optional=True), "",
           "PostgreSQL URL of the role that owns the tables and runs migrations; empty means `DATABASE_URL`.",
           scope="app", secret=True),
    Option("DATABASE_POOL_SIZE", Integer(1, 200), "5",
           "SQLAlchemy connection pool size per worker process.", scope="app"),
    Option("DATABASE_MAX_OVERFLOW", Integer(0, 200), "5",
           "Connections allowed above the pool size under burst load.", scope="app"),
    Option("DATABASE_POOL_TIMEOUT", Integer(1, 3600), "30",
           "Seconds to wait for a free pooled connection before failing.", scope="app"),
    # -- redis connection behaviour ----------------------------------------------------------
    Option("REDIS_SOCKET_TIMEOUT", Integer(1, 3600), "30",
           "Seconds a Redis read/write may block (broker and result backend).", scope="app"),
    Option("REDIS_SOCKET_CONNECT_TIMEOUT", Integer(1, 3600), "30",
           "Seconds to wait for a Redis connection to open.", scope="app"),
    Option("REDIS_RETRY_ON_TIMEOUT", Boolean(), "yes", "Retry a Redis command once after a timeout.", scope="app"),
    Option("REDIS_SOCKET_KEEPALIVE", Boolean(), "yes", "TCP keepalive on Redis sockets.", scope="app"),
    Option("REDIS_HEALTH_CHECK_INTERVAL", Integer(0, 3600), "25",
           "Seconds of idleness after which a pooled Redis connection is PINGed before use (0 = never).",
           scope="app"),
    Option("REDIS_MAX_CONNECTIONS", Integer(1, 10000), "20",
           "Upper bound of each Redis connection pool (broker and result backend).", scope="app"),
    Option("REDIS_KEY_PREFIX", Pattern(r"[A-Za-z0-9_.:\-]+", "letters, digits and _.:-"), "",
           "Prefix for every Redis key of broker and result backend, to share one Redis between deployments.",
           scope="app"),
    Option("BROKER_VISIBILITY_TIMEOUT", Integer(60, 604800), "7200",
           "Seconds before an unacknowledged message is redelivered; must exceed `TASK_TIME_LIMIT` plus the "
           "larger of `TASK_MAX_COUNTDOWN` and `TASK_RETRY_BACKOFF_MAX`.", scope="app"),
    Option("REDIS_SSL_CERT_REQS", Choice(CERT_REQS, CERT_REQS_ALIASES, optional=True), "",
           "TLS certificate verification for `rediss://` (`required`, `optional`, `none`); empty means the "
           "URL's `ssl_cert_reqs`, else `required`. Anything but `required` logs a warning.", scope="app"),
    Option("REDIS_SSL_CA_CERTS", FilePath(), "",
           "CA bundle (PEM) that signed the Redis server certificate; empty means the system CAs.", scope="app"),
    Option("REDIS_SSL_CERTFILE", FilePath(), "", "Client certificate (PEM) for mutual TLS.", scope="app"),
    Option("REDIS_SSL_KEYFILE", FilePath(), "", "Client private key (PEM) for mutual TLS.", scope="app"),
    # -- tasks ---------------------------------------------------------------------------------
    Option("TASK_TIME_LIMIT", Integer(1, 86400), "3600",
           "Hard time limit in seconds; the task's process is killed after it.", scope="app"),
    Option("TASK_SOFT_TIME_LIMIT", Integer(1, 86400), "3300",
           "Soft time limit in seconds (raises SoftTimeLimitExceeded inside the task).", scope="app"),
    Option("TASK_MAX_COUNTDOWN", Integer(0, 604800), "600",
           "Longest countdown/ETA (seconds) producers use, counted into the visibility-timeout check.",
           scope="app"),
    Option("TASK_MAX_RETRIES", Integer(0, 100), "3", "Automatic retries of a failing task.", scope="app"),
    Option("TASK_RETRY_BACKOFF_MAX", Integer(1, 86400), "600",
           "Cap, in seconds, of the exponential retry backoff (jitter is applied).", scope="app"),
    Option("TASK_ACKS_LATE", Boolean(), "yes",
           "Acknowledge after the task ran, so that a killed worker's tasks run again (implies reject-on-worker-"
           "lost); a task may then run twice, so make its effect idempotent (docs/reliability.md, Delivery). "
           "`no` loses the prefetched and running tasks of a killed worker.", scope="app"),
    Option("RESULT_EXPIRES", Integer(60, 31536000), "3600", "Seconds results are kept.", scope="app"),
    Option("TENANT_SIGNING_KEY", SigningKeys(), "",
           "HMAC keys that sign the tenant of every published task message; workers then reject (dead-letter) "
           "unsigned or badly signed messages before they run. Comma-separated for rotation: the first signs, "
           "all verify. Empty: no signing. Producers and workers need the same keys. See docs/tenancy.md.",
           scope="app", secret=True),
    Option("DB_ENCRYPTION_KEY", FernetKeys(), "",
           "Fernet keys that encrypt endpoint secrets (auth tokens, OAuth client secrets) in the database. "
           "Comma-separated for rotation: the first encrypts, all decrypt. Empty: endpoints with a secret cannot be "
           "written or called. Every process that writes or calls endpoints needs the same keys.",
           scope="app", secret=True),
    Option("LOG_LEVEL", Choice(LOG_LEVELS), "INFO",
           "Log level of the product's own loggers (`worker.*`); Celery's follow `CELERY_WORKER_LOGLEVEL`.",
           scope="app"),
    Option("LOG_FORMAT", Choice(("text", "json")), "text",
           "`text`: one readable line per record; `json`: one JSON object per line (time, level, logger, message, "
           "task_id, task_name, organization_id, user_id, run_id) for log collectors. See docs/observability.md.",
           scope="app"),
    # -- worker process (read by entrypoint.sh through `python -m config worker-args`) --------
    Option("CELERY_WORKER_CONCURRENCY", Integer(1, 1000), "8", "Worker processes/threads.", scope="worker"),
    Option("CELERY_WORKER_PREFETCH_MULTIPLIER", Integer(1, 1000), "1",
           "Messages reserved per process/thread. Prefetched messages wait for their worker; 1 costs nothing "
           "measurable on Redis.", scope="worker"),
    Option("CELERY_WORKER_MAX_TASKS_PER_CHILD", Integer(0, 10000000), "1000",
           "Tasks a pool process runs before it is replaced (0 = unlimited).", scope="worker"),
    Option("CELERY_WORKER_MAX_MEMORY_PER_CHILD", KiBOrAuto(0, 1073741824), "0",
           "Resident memory in KiB after which a pool process is replaced (0 = unlimited). `auto` = 3/4 of the "
           "container's memory limit (cgroup) divided by the concurrency, prefork only.", scope="worker"),
    Option("CELERY_WORKER_LOGLEVEL", Choice(LOG_LEVELS), "INFO", "Celery worker log level.", scope="worker"),
    Option("CELERY_WORKER_QUEUES", WordList(_QUEUE_NAME, "comma-separated queue names [A-Za-z0-9_.:-]"),
           "celery,execution", "Queues this worker consumes.", scope="worker"),
    Option("CELERY_WORKER_POOL", Choice(("prefork", "threads", "gevent", "solo")), "prefork",
           "Execution pool.", scope="worker"),
    Option("CELERY_WORKER_HOSTNAME", Pattern(r"[A-Za-z0-9_.%\-]+(@[A-Za-z0-9_.%\-]+)?",
                                             "a node name like worker@%h (letters, digits, _.%-, one @)"), "",
           "Worker node name; empty means Celery's default (celery@<host>).", scope="worker"),
    Option("CELERY_WORKER_MINGLE", Boolean(), "no",
           "Celery's mingle step at start-up: the worker waits about 1 s for the other workers' revoked task ids "
           "and logical clocks. `no` (default) passes `--without-mingle` and starts about 1 s faster, but a worker "
           "started after a `revoke` does not learn it from the running workers (each worker keeps revokes in its "
           "memory only; `--statedb` in `CELERY_WORKER_OPTS` persists them per worker) and runs that task if it "
           "gets the message. `yes` for deployments that revoke queued tasks while workers scale up.",
           scope="worker"),
    Option("CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT", Integer(0, 86400), "60",
           "Seconds running tasks get to finish after SIGTERM before they are stopped.",
           scope="app"),  # app, not worker: build_celery_config puts it in the app's worker_soft_shutdown_timeout
    Option("CELERY_WORKER_OPTS", Text("extra `celery worker` options, split like a shell, or empty"), "",
           "Extra options passed to `celery worker` as they are.", scope="worker"),
    # -- health ----------------------------------------------------------------------------------
    Option("WORKER_HEALTH_DIR", DirectoryPath(), "/tmp/worker-health",  # noqa: S108 - the one writable path of a read-only image
           "Where the worker keeps its heartbeat file and ready marker.", scope="health"),
    Option("WORKER_HEARTBEAT_INTERVAL", Integer(1, 3600), "2",
           "Seconds between heartbeat file updates while the consumer is alive.", scope="health"),
    Option("WORKER_HEARTBEAT_MAX_AGE", Integer(2, 86400), "10",
           "Age in seconds after which the healthcheck calls a heartbeat stale (keep it above "
           "`WORKER_HEARTBEAT_INTERVAL`). A heartbeat whose worker process is gone is stale at once.",
           scope="health"),
    Option("WORKER_BROKER_LOST_EXIT_AFTER", Integer(0, 86400), "300",
           "Seconds without a broker connection (also at start-up) after which the worker stops beating and exits "
           "with status 1. 0 = never (not recommended: a worker without a broker then looks healthy).",
           scope="health"),
    # -- metrics ---------------------------------------------------------------------------------
    Option("METRICS_PORT", Integer(0, 65535), "0",
           "Port of the worker's Prometheus `/metrics` endpoint, served by the main process (0 = off). "
           "See docs/observability.md.", scope="worker"),
    Option("METRICS_ORGANIZATIONS", Pattern(r"[A-Za-z0-9_\-]+(,[A-Za-z0-9_\-]+)*",
                                             "comma-separated organization ids without spaces"), "",
           "Organization ids that get their own `organization` label on the task and run metrics; every other "
           "organization is counted as `other`. Empty: no per-organization label. Each id multiplies the series "
           "count: keep the list short.", scope="worker"),
    # -- flower ----------------------------------------------------------------------------------
    Option("ENABLE_FLOWER", Boolean(), "no", "Start Flower beside the worker.", scope="flower"),
    Option("FLOWER_PORT", Integer(1, 65535), "5555", "Port Flower listens on.", scope="flower"),
    # -- test execution ------------------------------------------------------------------------
    Option("EXECUTION_ALLOW_PRIVATE_TARGETS", Boolean(), "no",
           "Let endpoints and OAuth token URLs resolve to loopback, private or link-local addresses; refused "
           "unless `yes` (tests and `make run` set it).", scope="worker"),
    Option("EXECUTION_RUN_CONCURRENCY", Integer(1, 1000), "100",
           "Endpoint calls of one run in flight at once, when its test configuration sets no `max_concurrency`.",
           scope="worker"),
    Option("EXECUTION_LANE_CONCURRENCY", Integer(1, 1000), "50",
           "Endpoint calls in flight in one lane task; a run gets ceil(run cap / this) lanes.", scope="worker"),
    Option("EXECUTION_LEASE_SECONDS", Integer(10, 3600), "60",
           "Seconds a test claimed by a worker stays its own; a test of a worker that died is retried after this.",
           scope="worker"),
    Option("EXECUTION_LANE_SECONDS", Integer(1, 3600), "5",
           "Seconds a lane task works before it hands over to a fresh task, so that other runs' tasks interleave "
           "on the queue.", scope="worker"),
    Option("EXECUTION_MAX_ATTEMPTS", Integer(1, 10), "3",
           "Attempts per endpoint call (timeouts, connection errors, 5xx and 429 are retried).", scope="worker"),
    Option("EXECUTION_RETRY_AFTER_CAP", Integer(0, 3600), "60",
           "Longest `Retry-After` (seconds) of a 429 that is waited for; a longer one ends the call rate limited.",
           scope="worker"),
    Option("EXECUTION_MAX_RESPONSE_BYTES", Integer(1024, 104857600), "1048576",
           "Largest endpoint response body read; a larger one fails the test (`response_too_large`).",
           scope="worker"),
    Option("EXECUTION_MAX_OUTPUT_CHARS", Integer(256, 10485760), "65536",
           "Characters of an endpoint's output stored in `test_result.output` (longer output is cut).",
           scope="worker"),
    Option("EXECUTION_SWEEP_INTERVAL", Integer(0, 86400), "30",
           "Seconds between sweeps for stalled runs, in the workers and in celery beat's schedule (0 disables "
           "both).", scope="app"),
    Option("EXECUTION_STALL_SECONDS", Integer(30, 86400), "120",
           "Seconds without progress after which a queued or running run counts as stalled and is resumed.",
           scope="worker"),
    # -- LLM judges --------------------------------------------------------------------------------
    Option("GEMINI_API_KEY", Pattern(_API_KEY, "printable ASCII without whitespace"), "",
           "Gemini API key for LLM-judge metrics; empty: no Gemini judge.", scope="worker", secret=True),
    Option("GEMINI_MODEL_NAME", Pattern(_MODEL_NAME, "letters, digits and _.:/-", optional=False), "gemini-2.0-flash",
           "Gemini model of LLM-judge metrics that name none.", scope="worker"),
    Option("GEMINI_BASE_URL", Url(("https", "http")), "https://generativelanguage.googleapis.com",
           "Base URL of the Gemini API.", scope="worker"),
    Option("AZURE_OPENAI_ENDPOINT", Url(("https", "http"), optional=True), "",
           "Azure OpenAI resource URL for LLM-judge metrics; empty: no Azure judge.", scope="worker"),
    Option("AZURE_OPENAI_API_KEY", Pattern(_API_KEY, "printable ASCII without whitespace"), "",
           "Azure OpenAI API key.", scope="worker", secret=True),
    Option("AZURE_OPENAI_DEPLOYMENT_NAME", Pattern(_MODEL_NAME, "letters, digits and _.:/-"), "",
           "Azure OpenAI deployment of LLM-judge metrics that name none.", scope="worker"),
    Option("AZURE_OPENAI_API_VERSION", Pattern(r"[A-Za-z0-9.\-]+", "letters, digits and .-", optional=False),
           "2024-10-21",
           "Azure OpenAI API version.", scope="worker"),
    Option("JUDGE_ALLOWED_MODELS",
           WordList(lambda word: word == "*" or re.fullmatch(_MODEL_NAME, word) is not None,
                    "comma-separated model or deployment names [A-Za-z0-9_.:/-], or *, or empty", optional=True),
           "",
           "Models (Gemini) and deployments (Azure OpenAI) a metric may choose as its judge besides the configured "
           "GEMINI_MODEL_NAME and AZURE_OPENAI_DEPLOYMENT_NAME; empty: only those; * : any. The operator's keys pay "
           "for every judge call, so tenants do not pick models by default.", scope="worker"),
    Option("JUDGE_TIMEOUT_SECONDS", Integer(1, 600), "60",
           "Seconds one LLM-judge request may take.", scope="worker"),
    Option("FLOWER_BASIC_AUTH", Credentials(), "",
           "Flower basic-auth credentials.", scope="flower", secret=True),
    Option("FLOWER_UNAUTHENTICATED", Boolean(), "no",
           "Allow Flower without authentication (logged loudly). Only for local development.", scope="flower"),
    # -- the task and run API (python -m worker api; docs/api.md) --------------------------------
    Option("API_TOKEN_SECRET", TokenSecrets(), "",
           "HMAC keys that sign the API's bearer tokens (`python -m worker api-token` makes one for a user of the "
           "database). Comma-separated for rotation: the first signs, all verify. Empty: `python -m worker api` "
           "refuses to start. See docs/api.md.", scope="api", secret=True),
    Option("API_HOST", Pattern(r"[A-Za-z0-9.:\-]+", "a host name or IP address (letters, digits and .:-)",
                               optional=False), "127.0.0.1",
           "Address `python -m worker api` listens on (the image sets 0.0.0.0).", scope="api"),
    Option("API_PORT", Integer(1, 65535), "8000", "Port `python -m worker api` listens on.", scope="api"),
)

BY_NAME: dict[str, Option] = {option.name: option for option in OPTIONS}
