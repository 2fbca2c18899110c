#!/usr/bin/env python3
"""Write the chart's copies of config/options.py: values.schema.json, the `config:` block of values.yaml and
files/options.json.

config/options.py declares every variable of the image once; the chart must not repeat any of it by hand:

* values.schema.json (JSON Schema draft-07, read by helm 3 and 4): bounds, choices and patterns of every value
  that sets an image variable come from the option's parser;
* values.yaml, between the BEGIN/END marker comments of `config:`: one key per option the chart exposes there
  (camelCase of the variable name), its default and its `# --` help line;
* files/options.json, read by `tw.configData` in _helpers.tpl and by the chart tests: which `config:` key sets
  which variable as which type, the variables the chart fixes itself, the names the image declares, and the
  hostname patterns the template repeats for `--skip-schema-validation`.

The schema is generated so that the worker-pool settings are declared once and reused for `workerDefaults`
(every key required) and for each entry of `workers` (every key optional, `name` required). Every object the
chart defines rejects unknown keys and every value carries a description. Kubernetes pass-through objects
(affinity, tolerations, env entries, ...) are typed loosely here and validated against the Kubernetes schema
by the chart tests after rendering.

    python helm/worker/hack/generate_schema.py          # rewrite the files
    python helm/worker/hack/generate_schema.py --check  # exit 1 when any is stale (used by the tests)
    python helm/worker/hack/generate_schema.py --check --chart DIR  # the same for a copy of the chart
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

CHART = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(CHART.parent.parent))

# The image's declared variables: bounds, choices and patterns of the values that set them come from there, so
# the schema refuses what `python -m config check` would refuse at start-up.
from config.options import BY_NAME, OPTIONS, TENANT_SIGNING_KEY_MIN_LENGTH, KiBOrAuto  # noqa: E402 - needs the repository root on sys.path
from config.spec import Boolean, Choice, Integer, Option, Pattern, Url, WordList  # noqa: E402

ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# The image's queue-name rule (CELERY_WORKER_QUEUES checks each word with this compiled pattern's match).
QUEUE = BY_NAME["CELERY_WORKER_QUEUES"].parser.valid.__self__.pattern
K8S_NAME = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
LOG_LEVELS = list(BY_NAME["LOG_LEVEL"].parser.choices)

# -- hostname: one character class, two rules ---------------------------------------------------------------
# The image accepts any node name made of NODE_CHARS with at most one @ (its CELERY_WORKER_HOSTNAME Pattern). The
# chart is stricter: a name of its own must contain %h or %n (the pod name; not escaped as %%), so every replica
# gets its own node name. The preStop drain cancels the consumer of the pod's node name; with a name shared by
# all replicas one pod's drain would stop every replica. %i and %I expand to the process index, the same "0" in
# every replica's main process, and %d to the domain, so neither makes a name unique.
NODE_CHARS = re.match(r"\[([^\]]+)\]", BY_NAME["CELERY_WORKER_HOSTNAME"].parser.regex.pattern).group(1)
_LITERAL = NODE_CHARS.replace("%", "") + "@"  # "%" only as the start of an expansion here; @ checked by the image
HOSTNAME = rf"^(([{_LITERAL}]|%[%diI])*%[hn]([{_LITERAL}]|%[%hndiI])*)?$"


# -- building blocks ------------------------------------------------------------------------------------------
def obj(description: str, properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "description": description, "additionalProperties": False,
                              "properties": properties}
    if required:
        schema["required"] = required
    return schema


def string(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **extra}


def integer(description: str, minimum: int | None = 0, maximum: int | None = None, nullable: bool = False
            ) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": ["integer", "null"] if nullable else "integer", "description": description}
    if minimum is not None:
        schema["minimum"] = minimum
    if maximum is not None:
        schema["maximum"] = maximum
    return schema


def option_int(env: str, description: str) -> dict[str, Any]:
    """An integer value that becomes the image variable `env`, with that variable's bounds."""
    parser = BY_NAME[env].parser
    return integer(description, parser.minimum, parser.maximum)


def option_kib_or_auto(env: str, description: str) -> dict[str, Any]:
    """`auto` or an integer within the bounds of `env` (a KiBOrAuto option: the image computes `auto` at launch)."""
    parser = BY_NAME[env].parser
    if not isinstance(parser, KiBOrAuto):
        raise TypeError(f"{env} is not a KiBOrAuto option in config/options.py")
    return {"description": description, "oneOf": [{"type": "integer", "minimum": parser.minimum,
                                                   "maximum": parser.maximum},
                                                  {"type": "string", "enum": ["auto"]}]}


def option_choice(env: str, description: str) -> dict[str, Any]:
    return string(description, enum=list(BY_NAME[env].parser.choices))


def option_pattern(env: str) -> str:
    """The image's regular expression for `env`, anchored, empty allowed."""
    return f"^({BY_NAME[env].parser.regex.pattern})?$"


def option_url(env: str, description: str) -> dict[str, Any]:
    """A URL value with the image's schemes (config.spec.Url), empty allowed (existingSecret); a Redis URL also
    needs a host. Ports and the rest are left to the image."""
    parser = BY_NAME[env].parser
    schemes = "|".join(re.escape(scheme) for scheme in parser.schemes)
    host = r"([^/?#]*@)?[^/?#@:]+" if set(parser.schemes) <= {"redis", "rediss"} else ""
    return string(description, pattern=f"^(({schemes})://{host}.*)?$")


def boolean(description: str) -> dict[str, Any]:
    return {"type": "boolean", "description": description}


def string_map(description: str, nullable_values: bool = False, key_pattern: str | None = None) -> dict[str, Any]:
    value: dict[str, Any] = {"type": ["string", "null"] if nullable_values else "string"}
    schema: dict[str, Any] = {"type": "object", "description": description}
    if key_pattern:
        schema["propertyNames"] = {"pattern": key_pattern}
    schema["additionalProperties"] = value
    return schema


def k8s_object(description: str) -> dict[str, Any]:
    return {"type": "object", "description": description + " (Kubernetes object, passed through as is)."}


def k8s_list(description: str) -> dict[str, Any]:
    return {"type": "array", "description": description + " (Kubernetes objects, passed through as is).",
            "items": {"type": "object"}}


def env_list(description: str) -> dict[str, Any]:
    return {"type": "array", "description": description,
            "items": {"type": "object", "required": ["name"],
                      "properties": {"name": {"type": "string", "pattern": ENV_NAME, "description": "Variable name."}}}}


def quantity(description: str, nullable: bool = False) -> dict[str, Any]:
    types = ["string", "number"] + (["null"] if nullable else [])
    return {"type": types, "description": description, "pattern": r"^[0-9.]+[a-zA-Z]*$"}


def resources(description: str) -> dict[str, Any]:
    def side(what: str) -> dict[str, Any]:
        return {"type": "object", "description": f"Resource {what} (cpu, memory, ephemeral-storage, ...); "
                                                 "null removes an inherited entry.",
                "additionalProperties": quantity(f"A {what[:-1]} quantity.", nullable=True)}

    return obj(description, {"requests": side("requests"), "limits": side("limits")})


def probe(description: str) -> dict[str, Any]:
    handler = "Own probe handler (Kubernetes object); replaces the default one."
    return obj(description, {
        "enabled": boolean("Render this probe."),
        "initialDelaySeconds": integer("Seconds before the first probe."),
        "periodSeconds": integer("Seconds between probes.", 1),
        "timeoutSeconds": integer("Seconds before one probe times out.", 1),
        "failureThreshold": integer("Consecutive failures that count as failed.", 1),
        "successThreshold": integer("Consecutive successes that count as passed (1 for liveness/startup).", 1),
        "terminationGracePeriodSeconds": integer("Grace period when this probe kills the container.", 1),
        "exec": {"type": "object", "description": handler},
        "httpGet": {"type": "object", "description": handler},
        "tcpSocket": {"type": "object", "description": handler},
        "grpc": {"type": "object", "description": handler},
    })


# -- the worker pool --------------------------------------------------------------------------------------------
def pool_properties() -> dict[str, Any]:
    return {
        "replicas": integer("Replicas when no autoscaler is enabled for the pool."),
        "queues": {"type": "array", "description": "Queues the pool consumes (CELERY_WORKER_QUEUES).",
                   "minItems": 1, "uniqueItems": True, "items": {"type": "string", "pattern": QUEUE}},
        "pool": option_choice("CELERY_WORKER_POOL", "Execution pool (CELERY_WORKER_POOL)."),
        "concurrency": option_int("CELERY_WORKER_CONCURRENCY", "Processes or threads per pod "
                                  "(CELERY_WORKER_CONCURRENCY)."),
        "prefetchMultiplier": option_int("CELERY_WORKER_PREFETCH_MULTIPLIER", "Messages reserved per process "
                                         "(CELERY_WORKER_PREFETCH_MULTIPLIER); 1 keeps queue-length autoscaling "
                                         "honest."),
        "maxTasksPerChild": option_int("CELERY_WORKER_MAX_TASKS_PER_CHILD", "Tasks a pool process runs before it "
                                       "is replaced; 0 = unlimited (CELERY_WORKER_MAX_TASKS_PER_CHILD)."),
        "maxMemoryPerChild": option_kib_or_auto("CELERY_WORKER_MAX_MEMORY_PER_CHILD", (
            "KiB of resident memory after which a pool process is replaced (CELERY_WORKER_MAX_MEMORY_PER_CHILD); "
            "0 = unlimited. \"auto\" is passed to the image, which computes it at launch from the container's "
            "memory limit (cgroup): 75% of it divided by the concurrency for prefork, 0 without a limit or for "
            "other pools.")),
        "loglevel": string("Celery worker log level (CELERY_WORKER_LOGLEVEL).", enum=LOG_LEVELS),
        "hostname": {"type": "string", "pattern": HOSTNAME,
                     "allOf": [{"pattern": option_pattern("CELERY_WORKER_HOSTNAME")}], "description": (
            "Worker node name (CELERY_WORKER_HOSTNAME); empty means <pool name>@%h. A non-empty name must "
            "contain %h or %n (the pod name) so that every replica gets its own node name: the preStop drain "
            "cancels the consumer of the pod's node name, which with a shared name would stop every replica. At "
            "most one @, with text on both sides.")},
        "mingle": boolean("Celery's mingle step at start-up (CELERY_WORKER_MINGLE): the worker waits about 1 s "
                          "for the other workers' revoked task ids. false starts faster, but a pod started after "
                          "a revoke does not learn it; true for pools whose queued tasks are revoked while the "
                          "pool scales up."),
        "softShutdownTimeout": option_int("CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT", "Seconds running tasks get to "
                                          "finish after SIGTERM before they are stopped "
                                          "(CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT); also bounds the preStop drain."),
        "terminationGraceMarginSeconds": integer("Seconds added to the derived grace period for process exit "
                                                 "and log flushing (at least 15).", 15, 3600),
        "terminationGracePeriodSeconds": integer("Explicit pod grace period; null derives softShutdownTimeout "
                                                 "(twice with preStopDrain) plus the margin. The render fails when "
                                                 "it is shorter than that shutdown needs plus 15 s for the worker "
                                                 "to exit.", 0, None, nullable=True),
        "extraArgs": string("Extra `celery worker` options (CELERY_WORKER_OPTS), split like a shell line; the "
                            "render fails on an unclosed quote or a trailing backslash. The container checks the "
                            "words against celery worker's options when it starts (exit 64 on an unknown one)."),
        "preStopDrain": boolean("preStop hook `entrypoint.sh drain`: the pod stops consuming and waits for its "
                                "active tasks before SIGTERM."),
        "safeToEvict": boolean("Value of the cluster-autoscaler.kubernetes.io/safe-to-evict annotation; false "
                               "keeps the cluster autoscaler from removing busy workers."),
        "resources": resources("Container resources; the image sizes maxMemoryPerChild=auto from the memory "
                               "limit."),
        "nodeSelector": string_map("Node labels the pods require; null removes an inherited entry.", True),
        "tolerations": k8s_list("Tolerations of the pods"),
        "affinity": k8s_object("Affinity of the pods"),
        "topologySpreadConstraints": k8s_list("Topology spread constraints of the pods"),
        "priorityClassName": string("PriorityClass of the pods; empty means none."),
        "podAnnotations": string_map("Extra pod annotations; null removes an inherited entry.", True),
        "podLabels": string_map("Extra pod labels; null removes an inherited entry.", True),
        "env": env_list("Extra environment variables (Kubernetes EnvVar objects) of the worker container; they "
                        "come after, and so override, the chart's own."),
        "tmpSizeLimit": quantity("Size limit of the /tmp emptyDir (heartbeat files and temporary files)."),
        "startupProbe": probe("Startup probe; default handler `entrypoint.sh healthcheck` (heartbeat file age, no "
                              "broker round trip)."),
        "livenessProbe": probe("Liveness probe; default handler `entrypoint.sh healthcheck`."),
        "readinessProbe": probe("Readiness probe (off by default: workers serve no traffic); default handler "
                                "`entrypoint.sh healthcheck`."),
        "podDisruptionBudget": obj("PodDisruptionBudget of the pool.", {
            "enabled": boolean("Render a PodDisruptionBudget for the pool."),
            "maxUnavailable": {"type": ["integer", "string"], "description": "Pods that may be disrupted at once "
                               "(number or percentage); ignored when minAvailable is set."},
            "minAvailable": {"type": ["integer", "string", "null"],
                             "description": "Pods that must stay available (number or percentage); null uses "
                                            "maxUnavailable."},
            "unhealthyPodEvictionPolicy": string("Whether unhealthy pods may be evicted regardless of the budget.",
                                                 enum=["AlwaysAllow", "IfHealthyBudget"]),
        }),
        "autoscaling": obj("Autoscaling of the pool: an HPA or a KEDA ScaledObject, never both.", {
            "hpa": obj("HorizontalPodAutoscaler (autoscaling/v2) on CPU and/or memory utilisation.", {
                "enabled": boolean("Render an HPA for the pool (excludes keda)."),
                "minReplicas": integer("Lowest replica count.", 1),
                "maxReplicas": integer("Highest replica count.", 1),
                "targetCPUUtilizationPercentage": integer("Target average CPU utilisation in percent of the "
                                                          "request; null disables the CPU metric.", 1, None, True),
                "targetMemoryUtilizationPercentage": integer("Target average memory utilisation in percent of the "
                                                             "request; null disables the memory metric.", 1, None,
                                                             True),
                "behavior": k8s_object("HPA scaling behavior (autoscaling/v2 HorizontalPodAutoscalerBehavior)"),
            }),
            "keda": obj("KEDA ScaledObject on the Redis length of the pool's queues (one trigger per queue).", {
                "enabled": boolean("Render a ScaledObject for the pool (excludes hpa); needs keda.redis.address."),
                "minReplicaCount": integer("Lowest replica count; 0 lets KEDA scale the pool to zero.", 0),
                "maxReplicaCount": integer("Highest replica count.", 1),
                "pollingInterval": integer("Seconds between queue-length checks.", 1),
                "cooldownPeriod": integer("Seconds after the last activity before scaling to minReplicaCount 0.",
                                          0),
                "listLength": integer("Target queue length per replica.", 1),
                "activationListLength": integer("Queue length above which a pool at zero replicas is activated.",
                                                0),
            }),
        }),
    }


def worker_defaults() -> dict[str, Any]:
    props = pool_properties()
    nullable = {"terminationGracePeriodSeconds"}
    schema = obj("Settings every worker pool inherits; an entry of `workers` overrides any of them (maps merge, "
                 "lists replace, null removes an inherited map entry).", props,
                 required=sorted(k for k in props if k not in nullable))
    return schema


def worker_entry() -> dict[str, Any]:
    props = {"name": string("Pool name: part of the Deployment name and the tenant-worker/pool label.",
                            pattern=DNS_LABEL, maxLength=30), **pool_properties()}
    return obj("One worker pool (a Deployment); keys left out come from workerDefaults.", props, required=["name"])


# -- the config block: every option the chart exposes under `config:` ---------------------------------------
# Options that are not under `config:`, and why. Everything else that is not secret is there, under the camelCase
# of its name (config_key); secret options (URLs, credentials) are under `secret:`.
NOT_IN_CONFIG: dict[str, str] = {
    **{option.name: "per worker pool: workerDefaults / workers[]"
       for option in OPTIONS if option.name.startswith("CELERY_WORKER_")},
    "REDIS_SSL_CERT_REQS": "redisTls.certReqs, beside the CA and client certificate it applies to",
    "REDIS_SSL_CA_CERTS": "path of the CA bundle the chart mounts from redisTls.ca",
    "REDIS_SSL_CERTFILE": "path of the client certificate the chart mounts from redisTls.clientCert",
    "REDIS_SSL_KEYFILE": "path of the client key the chart mounts from redisTls.clientCert",
    "WORKER_HEALTH_DIR": "fixed to the image's default (FIXED), which lies on the /tmp emptyDir",
    "ENABLE_FLOWER": "fixed to no (FIXED): Flower runs as its own Deployment (flower.enabled)",
    "FLOWER_PORT": "flower.port, beside the Service and probes that use it",
    "FLOWER_UNAUTHENTICATED": "set by the Flower Deployment from flower.auth.type none",
    "API_HOST": "set by the API Deployment (all addresses of its pod)",
    "API_PORT": "api.port, beside the Service and probes that use it",
}
# Variables the chart sets itself in the ConfigMap, whatever the values say.
FIXED: dict[str, str] = {
    "WORKER_HEALTH_DIR": BY_NAME["WORKER_HEALTH_DIR"].default or "",
    "ENABLE_FLOWER": "no",
}
# The worker pods mount their writable emptyDir at /tmp (read-only root filesystem): the health directory must
# lie below it.
TMP_MOUNT = "/tmp"  # noqa: S108 - the mount path of the pods' emptyDir
MARK_BEGIN = "  # BEGIN generated by hack/generate_schema.py from config/options.py: edit there, then run it"
MARK_END = "  # END generated"


def config_key(name: str) -> str:
    """LOG_LEVEL -> logLevel: the one rule from a variable name to its `config:` key."""
    first, *rest = name.lower().split("_")
    return first + "".join(word.capitalize() for word in rest)


def config_options() -> list[Option]:
    return [o for o in OPTIONS if not o.secret and o.name not in NOT_IN_CONFIG]


def value_type(option: Option) -> str:
    """How a `config:` value is typed in values.yaml and turned back into the variable's text by tw.configData."""
    if isinstance(option.parser, Integer):
        return "integer"
    if isinstance(option.parser, Boolean):
        return "boolean"
    if isinstance(option.parser, (Choice, Pattern, Url, WordList)):
        return "string"
    raise SystemExit(f"{option.name}: no rule for {type(option.parser).__name__} values in `config:`; add one to "
                     f"value_type() or list the option in NOT_IN_CONFIG with the reason")


def default_value(option: Option) -> Any:
    kind = value_type(option)
    if kind == "boolean":
        return option.parse(option.default or "")
    if kind == "integer":
        return option.parse(option.default or "")
    return option.default or ""


def config_property(option: Option) -> dict[str, Any]:
    description = f"{option.name}: {option.help}"
    parser = option.parser
    if isinstance(parser, Integer):
        return integer(description, parser.minimum, parser.maximum)
    if isinstance(parser, Boolean):
        return boolean(description)
    if isinstance(parser, Choice):
        return string(description, enum=list(parser.choices))
    if isinstance(parser, Url):
        schemes = "|".join(re.escape(scheme) for scheme in parser.schemes)
        url = f"({schemes})://.+"
        return string(description, pattern=f"^({url})?$" if parser.optional else f"^{url}$")
    if isinstance(parser, WordList):
        return string(description)  # each word is checked by the image (config/spec.py WordList)
    return string(description, pattern=option_pattern(option.name))


def config_block() -> dict[str, Any]:
    properties = {config_key(o.name): config_property(o) for o in config_options()}
    properties["extra"] = string_map("Further non-secret variables NAME: value, for options newer than this chart. "
                                     "Secret variables are refused here: they belong in the Secret.", False, ENV_NAME)
    return obj("Non-secret settings, rendered into the ConfigMap every container reads.", properties,
               required=["logLevel"])


def options_table() -> dict[str, Any]:
    """files/options.json: what the templates and the chart tests read instead of their own copies."""
    health_dir = FIXED["WORKER_HEALTH_DIR"]
    if not health_dir.startswith(TMP_MOUNT + "/"):
        raise SystemExit(f"WORKER_HEALTH_DIR default {health_dir!r} is not below the pods' writable {TMP_MOUNT}")
    return {
        "config": {config_key(o.name): {"env": o.name, "type": value_type(o)} for o in config_options()},
        "fixed": FIXED,
        "declared": [o.name for o in OPTIONS],
        "patterns": {"hostname": HOSTNAME, "imageHostname": option_pattern("CELERY_WORKER_HOSTNAME")},
    }


def yaml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(value)


def config_yaml_lines() -> list[str]:
    lines = [MARK_BEGIN]
    for option in config_options():
        lines += textwrap.wrap(f"-- {option.name}: {option.help}", width=116, initial_indent="  # ",
                               subsequent_indent="  # ", break_on_hyphens=False)
        lines.append(f"  {config_key(option.name)}: {yaml_scalar(default_value(option))}")
    return [*lines, MARK_END]


def values_yaml(current: str) -> str:
    """values.yaml with the generated part of `config:` replaced."""
    lines = current.split("\n")
    if MARK_BEGIN not in lines or MARK_END not in lines:
        raise SystemExit(f"values.yaml lacks the marker lines {MARK_BEGIN.strip()!r} / {MARK_END.strip()!r}")
    begin, end = lines.index(MARK_BEGIN), lines.index(MARK_END)
    return "\n".join(lines[:begin] + config_yaml_lines() + lines[end + 1:])


def signing_keys(description: str) -> dict[str, Any]:
    """TENANT_SIGNING_KEY as config/options.py SigningKeys parses it (duplicates aside, which only the image sees)."""
    key = rf"[^\s,]{{{TENANT_SIGNING_KEY_MIN_LENGTH},}}"
    return string(f"{description} Each key at least {TENANT_SIGNING_KEY_MIN_LENGTH} characters, no whitespace.",
                  pattern=rf"^\s*({key}\s*(,\s*{key}\s*)*)?$")


def fernet_keys(description: str) -> dict[str, Any]:
    """DB_ENCRYPTION_KEY's shape (44 url-safe base64 characters per key); whether each decodes to 32 bytes is left
    to the image (config/options.py FernetKeys)."""
    key = r"[A-Za-z0-9_\-]{43}="
    return string(description, pattern=rf"^\s*({key}\s*(,\s*{key}\s*)*)?$")


# -- everything else --------------------------------------------------------------------------------------------
def secret_block() -> dict[str, Any]:
    key = {"type": "string", "minLength": 1, "pattern": r"^[-._a-zA-Z0-9]+$"}

    def key_name(var: str) -> dict[str, Any]:
        return {**key, "description": f"Key inside the Secret that holds {var}."}

    return obj("Connection URLs, Flower credentials and model API keys. Prefer existingSecret.", {
        "existingSecret": string("Existing Secret holding the keys named in secret.keys (and secret.extraKeys); "
                                 "when set, the chart creates no Secret and the value fields below must be "
                                 "empty."),
        "brokerUrl": option_url("BROKER_URL", "BROKER_URL for the chart-created Secret (redis:// or rediss://)."),
        "resultBackend": option_url("CELERY_RESULT_BACKEND", "CELERY_RESULT_BACKEND for the chart-created Secret."),
        "databaseUrl": option_url("DATABASE_URL", "DATABASE_URL (runtime role) for the chart-created Secret."),
        "migrationDatabaseUrl": option_url("MIGRATION_DATABASE_URL", "MIGRATION_DATABASE_URL (table owner) for the "
                                           "chart-created Secret; empty means DATABASE_URL."),
        "flowerBasicAuth": string("FLOWER_BASIC_AUTH (user:password[,user:password...]) for the chart-created "
                                  "Secret."),
        "flowerOauth2Key": string("FLOWER_OAUTH2_KEY (OAuth client id) for the chart-created Secret."),
        "flowerOauth2Secret": string("FLOWER_OAUTH2_SECRET (OAuth client secret) for the chart-created Secret."),
        "flowerCookieSecret": string("FLOWER_COOKIE_SECRET for the chart-created Secret; set it when Flower "
                                     "uses OAuth so sessions survive restarts."),
        "redisPassword": string("Redis password KEDA's scaler uses (the workers take theirs from the URL)."),
        "tenantSigningKey": signing_keys("TENANT_SIGNING_KEY for the chart-created Secret: comma-separated HMAC "
                                         "keys, the first signs, all verify; empty means no signing."),
        "dbEncryptionKey": fernet_keys("DB_ENCRYPTION_KEY for the chart-created Secret: comma-separated Fernet "
                                       "keys that encrypt endpoint secrets, the first encrypts, all decrypt."),
        "geminiApiKey": string("GEMINI_API_KEY (LLM-judge metrics) for the chart-created Secret.",
                               pattern=option_pattern("GEMINI_API_KEY")),
        "azureOpenaiApiKey": string("AZURE_OPENAI_API_KEY (LLM-judge metrics) for the chart-created Secret.",
                                    pattern=option_pattern("AZURE_OPENAI_API_KEY")),
        "apiTokenSecret": signing_keys("API_TOKEN_SECRET for the chart-created Secret: comma-separated HMAC keys of "
                                       "the API's bearer tokens, the first signs, all verify (api.enabled)."),
        "extra": string_map("Extra secret variables NAME: value for the chart-created Secret (model API keys such "
                            "as OPENAI_API_KEY); each reaches the workers as a variable.", False, ENV_NAME),
        "extraKeys": {"type": "array", "uniqueItems": True,
                      "description": "Names of extra keys in existingSecret passed to the workers as variables of "
                                     "the same name (model API keys).",
                      "items": {"type": "string", "pattern": ENV_NAME}},
        "keys": obj("Key names inside the Secret, chart-created or existing.", {
            "brokerUrl": key_name("BROKER_URL"),
            "resultBackend": key_name("CELERY_RESULT_BACKEND"),
            "databaseUrl": key_name("DATABASE_URL"),
            "migrationDatabaseUrl": key_name("MIGRATION_DATABASE_URL (optional in the Secret)"),
            "flowerBasicAuth": key_name("FLOWER_BASIC_AUTH"),
            "flowerOauth2Key": key_name("FLOWER_OAUTH2_KEY"),
            "flowerOauth2Secret": key_name("FLOWER_OAUTH2_SECRET"),
            "flowerCookieSecret": key_name("FLOWER_COOKIE_SECRET (optional in the Secret)"),
            "redisPassword": key_name("the Redis password for KEDA"),
            "tenantSigningKey": key_name("TENANT_SIGNING_KEY (optional in the Secret)"),
            "dbEncryptionKey": key_name("DB_ENCRYPTION_KEY (optional in the Secret)"),
            "geminiApiKey": key_name("GEMINI_API_KEY (optional in the Secret)"),
            "azureOpenaiApiKey": key_name("AZURE_OPENAI_API_KEY (optional in the Secret)"),
            "apiTokenSecret": key_name("API_TOKEN_SECRET (needed with api.enabled, unless api.authDependency)"),
        }, required=["brokerUrl", "resultBackend", "databaseUrl", "migrationDatabaseUrl", "flowerBasicAuth",
                     "flowerOauth2Key", "flowerOauth2Secret", "flowerCookieSecret", "redisPassword",
                     "tenantSigningKey", "dbEncryptionKey", "geminiApiKey", "azureOpenaiApiKey", "apiTokenSecret"]),
    })


def redis_tls_block() -> dict[str, Any]:
    return obj("TLS to Redis (rediss:// URLs): the CA bundle and optional client certificate are mounted "
               "read-only and wired to REDIS_SSL_*.", {
                   "certReqs": option_choice("REDIS_SSL_CERT_REQS", "REDIS_SSL_CERT_REQS; anything but required "
                                             "skips verification and is unsafe."),
                   "ca": obj("CA bundle that signed the Redis server certificate; set at most one source. None "
                             "means the system CAs.", {
                       "existingSecret": string("Existing Secret holding the CA bundle."),
                       "existingConfigMap": string("Existing ConfigMap holding the CA bundle."),
                       "key": string("Key of the CA bundle in that Secret or ConfigMap.", minLength=1),
                       "pem": string("CA bundle as PEM text; the chart creates a ConfigMap from it."),
                   }),
                   "clientCert": obj("Client certificate for mutual TLS.", {
                       "existingSecret": string("Existing Secret (kubernetes.io/tls) with certificate and key; "
                                                "empty disables mutual TLS."),
                       "certKey": string("Key of the certificate in that Secret.", minLength=1),
                       "keyKey": string("Key of the private key in that Secret.", minLength=1),
                   }),
               })


def flower_block() -> dict[str, Any]:
    return obj("Flower: its own Deployment and Service running the image with `entrypoint.sh flower`.", {
        "enabled": boolean("Run Flower. It turns on task events in every worker, which costs throughput."),
        "replicas": integer("Flower replicas (Flower keeps state in memory: 1 is usual).", 0, 10),
        "port": option_int("FLOWER_PORT", "FLOWER_PORT: port Flower listens on."),
        "urlPrefix": string("URL prefix such as /flower (FLOWER_URL_PREFIX); applied to Flower, its probes and "
                            "the Ingress path.", pattern=r"^/?([A-Za-z0-9_.~\-]+/?)*$"),
        "purgeOfflineWorkers": integer("FLOWER_PURGE_OFFLINE_WORKERS: seconds after which offline workers "
                                       "disappear from Flower.", 0),
        "auth": obj("How Flower authenticates; the render fails without authentication unless explicitly "
                    "allowed.", {
                        "type": string("basic: FLOWER_BASIC_AUTH from the Secret; oauth: FLOWER_AUTH_PROVIDER and "
                                       "FLOWER_OAUTH2_* (key and secret from the Secret); none: no "
                                       "authentication (needs allowUnauthenticated).",
                                       enum=["basic", "oauth", "none"]),
                        "allowUnauthenticated": boolean("Allow type none (sets FLOWER_UNAUTHENTICATED=yes). Only "
                                                        "for development."),
                        "oauth": obj("OAuth settings for type oauth.", {
                            "provider": string("FLOWER_AUTH_PROVIDER, e.g. flower.views.auth.GithubLoginHandler."),
                            "allowedEmails": string("FLOWER_AUTH: regular expression of e-mail addresses allowed "
                                                    "in."),
                            "redirectUri": string("FLOWER_OAUTH2_REDIRECT_URI."),
                        }),
                    }),
        "resources": resources("Flower container resources."),
        "nodeSelector": string_map("Node labels the Flower pod requires."),
        "tolerations": k8s_list("Tolerations of the Flower pod"),
        "affinity": k8s_object("Affinity of the Flower pod"),
        "podAnnotations": string_map("Extra annotations of the Flower pod."),
        "podLabels": string_map("Extra labels of the Flower pod."),
        "env": env_list("Extra environment variables (Kubernetes EnvVar objects) of the Flower container."),
        "livenessProbe": probe("Liveness probe; default handler GET <urlPrefix>/healthcheck (no auth needed)."),
        "readinessProbe": probe("Readiness probe; default handler GET <urlPrefix>/healthcheck."),
        "service": obj("Flower's Service.", {
            "type": string("Service type.", enum=["ClusterIP", "NodePort", "LoadBalancer"]),
            "port": integer("Service port.", 1, 65535),
            "annotations": string_map("Service annotations."),
        }),
        "ingress": obj("Ingress for Flower; its path is the URL prefix.", {
            "enabled": boolean("Render an Ingress (needs flower.enabled)."),
            "className": string("IngressClass name; empty means the cluster default."),
            "annotations": string_map("Ingress annotations."),
            "hosts": {"type": "array", "description": "Host names; empty means any host.",
                      "items": {"type": "string", "minLength": 1}},
            "tls": k8s_list("IngressTLS entries: [{secretName: ..., hosts: [...]}]"),
        }),
    })


def api_block() -> dict[str, Any]:
    return obj("The task and run API (docs/api.md): its own Deployment and Service running `entrypoint.sh api`.", {
        "enabled": boolean("Run the API. Needs secret.apiTokenSecret (or API_TOKEN_SECRET in secret.existingSecret), "
                           "or authDependency."),
        "replicas": integer("API replicas (stateless).", 0, 100),
        "port": option_int("API_PORT", "API_PORT: port the API listens on."),
        "authDependency": string("MODULE:NAME of a FastAPI dependency in the image that returns the current user, "
                                 "instead of the bearer tokens (`python -m worker api --auth`); empty: tokens.",
                                 pattern=r"^([A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*)?$"),
        "resources": resources("API container resources."),
        "nodeSelector": string_map("Node labels the API pods require."),
        "tolerations": k8s_list("Tolerations of the API pods"),
        "affinity": k8s_object("Affinity of the API pods"),
        "podAnnotations": string_map("Extra annotations of the API pods."),
        "podLabels": string_map("Extra labels of the API pods."),
        "env": env_list("Extra environment variables (Kubernetes EnvVar objects) of the API container."),
        "livenessProbe": probe("Liveness probe; default handler GET /healthz (no authentication, no database)."),
        "readinessProbe": probe("Readiness probe; default handler GET /healthz."),
        "service": obj("The API's Service.", {
            "type": string("Service type.", enum=["ClusterIP", "NodePort", "LoadBalancer"]),
            "port": integer("Service port.", 1, 65535),
            "annotations": string_map("Service annotations."),
        }),
    })


def keda_block() -> dict[str, Any]:
    return obj("Connection of KEDA's Redis scaler, shared by every pool with autoscaling.keda.enabled.", {
        "redis": obj("The broker Redis as KEDA sees it.", {
            "address": string("host:port of the broker Redis; required when a pool uses KEDA."),
            "databaseIndex": integer("Database number of the broker (the /N of BROKER_URL).", 0, 15),
            "tls": boolean("Connect with TLS; the CA and client certificate come from redisTls."),
            "usePassword": boolean("Authenticate with the password in the Secret key secret.keys.redisPassword."),
        }),
    })


def migration_block() -> dict[str, Any]:
    return obj("Database migrations: a pre-install/pre-upgrade hook Job running `entrypoint.sh migrate`.", {
        "enabled": boolean("Render the migration Job."),
        "backoffLimit": integer("Retries of a failed migration pod.", 0, 10),
        "activeDeadlineSeconds": integer("Seconds after which the migration Job fails.", 1),
        "resources": resources("Migration container resources."),
        "env": env_list("Extra environment variables (Kubernetes EnvVar objects) of the migration container."),
    })


def network_policy_block() -> dict[str, Any]:
    def egress(description: str) -> dict[str, Any]:
        return obj(description, {
            "to": k8s_list("NetworkPolicyPeer entries; empty allows any destination on the ports"),
            "ports": {"type": "array", "description": "Destination ports (TCP; DNS also UDP).", "minItems": 1,
                      "items": {"type": "integer", "minimum": 1, "maximum": 65535}},
        })

    return obj("NetworkPolicy: no ingress except to Flower from flowerFrom and to the API from apiFrom; egress to "
               "DNS, Redis and PostgreSQL only (plus extraEgress).", {
                   "enabled": boolean("Render the NetworkPolicies."),
                   "dns": egress("Egress to DNS servers."),
                   "redis": egress("Egress to Redis."),
                   "postgresql": egress("Egress to PostgreSQL."),
                   "extraEgress": k8s_list("Further egress rules (NetworkPolicyEgressRule), e.g. HTTPS to model "
                                           "APIs"),
                   "flowerFrom": k8s_list("NetworkPolicyPeer entries allowed to reach Flower's port (UI, API, "
                                          "/metrics), e.g. the ingress controller and Prometheus; required with "
                                          "flower.ingress.enabled"),
                   "apiFrom": k8s_list("NetworkPolicyPeer entries allowed to reach the API's port (its clients, "
                                       "the ingress controller); required with api.enabled"),
                   "metricsFrom": k8s_list("NetworkPolicyPeer entries allowed to reach the workers' /metrics port "
                                           "(config.metricsPort), e.g. Prometheus"),
                   "flowerOAuthEgress": egress("Egress of the Flower pods to the OAuth provider (HTTPS); rendered "
                                               "only with flower.auth.type oauth."),
               })


def schema() -> dict[str, Any]:
    top = obj("Values of the tenant-worker chart.", {
        "global": {"type": "object", "description": "Helm's global values (unused by this chart)."},
        "nameOverride": string("Replaces the chart name in resource names and labels.", pattern=r"^[a-z0-9-]*$"),
        "fullnameOverride": string("Replaces the full resource name prefix (default <release>-<chart>).",
                                   pattern=r"^[a-z0-9-]*$"),
        "commonLabels": string_map("Labels added to every rendered object."),
        "image": obj("The worker image (also used for Flower and migrations).", {
            "repository": string("Image repository.", minLength=1),
            "tag": string("Image tag; empty means the chart's appVersion."),
            "digest": string("Image digest; wins over the tag when set.", pattern=r"^(sha256:[a-f0-9]{64})?$"),
            "pullPolicy": string("Image pull policy.", enum=["Always", "IfNotPresent", "Never"]),
        }, required=["repository", "pullPolicy"]),
        "imagePullSecrets": {"type": "array", "description": "Secrets for pulling the image.",
                             "items": obj("A LocalObjectReference.", {"name": string("Secret name.")}, ["name"])},
        "serviceAccount": obj("The pods' ServiceAccount; its token is never mounted.", {
            "create": boolean("Create a ServiceAccount."),
            "name": string("ServiceAccount name; empty means the full name (create) or default."),
            "annotations": string_map("ServiceAccount annotations (e.g. cloud workload identity)."),
        }),
        "hostNetwork": boolean("Run pods in the host network namespace. Only for local runs with podman kube "
                               "play; never in a cluster."),
        "config": config_block(),
        "secret": secret_block(),
        "redisTls": redis_tls_block(),
        "workerDefaults": worker_defaults(),
        "workers": {"type": "array", "minItems": 1, "description": "Worker pools, one Deployment each.",
                    "items": worker_entry()},
        "keda": keda_block(),
        "flower": flower_block(),
        "api": api_block(),
        "metrics": obj("Scraping the workers' /metrics (served when config.metricsPort is above 0).", {
            "serviceMonitor": obj("A Prometheus Operator ServiceMonitor for the metrics Service.", {
                "enabled": boolean("Render the ServiceMonitor; needs config.metricsPort above 0."),
                "interval": string("Scrape interval.", pattern=r"^[0-9]+(ms|s|m|h)$"),
                "scrapeTimeout": string("Scrape timeout.", pattern=r"^[0-9]+(ms|s|m|h)$"),
                "labels": string_map("Labels of the ServiceMonitor (the Prometheus Operator selects by them)."),
            }),
        }),
        "migration": migration_block(),
        "networkPolicy": network_policy_block(),
    })
    return {"$schema": "http://json-schema.org/draft-07/schema#", "title": "tenant-worker chart values", **top}


def outputs(chart: Path) -> dict[Path, str]:
    """Every generated file of `chart` with the text it must have."""
    values = chart / "values.yaml"
    return {
        chart / "values.schema.json": json.dumps(schema(), indent=2, sort_keys=True) + "\n",
        values: values_yaml(values.read_text()),
        chart / "files" / "options.json": json.dumps(options_table(), indent=2) + "\n",
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a generated file is stale")
    parser.add_argument("--chart", type=Path, default=CHART, help="chart directory (default: this chart)")
    args = parser.parse_args(argv)
    stale = []
    for path, text in outputs(args.chart).items():
        if path.is_file() and path.read_text() == text:
            continue
        if args.check:
            stale.append(path)
        else:
            path.parent.mkdir(exist_ok=True)
            path.write_text(text)
    for path in stale:
        print(f"{path} is stale: run python helm/worker/hack/generate_schema.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
