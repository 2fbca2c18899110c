"""helm lint, and the values schema: generated, complete, strict, and in step with the image's options."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from chart_support import CHART, CONFIG_ENV, ROOT, VALUE_SETS, run_helm

SCHEMA_FILE = CHART / "values.schema.json"
GENERATOR = CHART / "hack" / "generate_schema.py"


def _schema() -> dict[str, Any]:
    return json.loads(SCHEMA_FILE.read_text())


def _defaults() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())


@pytest.mark.parametrize("values_set", ["default", "keda", "network-policy", "flower-prefix-ingress", "pools"])
def test_helm_lint_strict(helm_bin: Path, tmp_path: Path, values_set: str) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(json.dumps(VALUE_SETS[values_set]))
    done = run_helm(helm_bin, "lint", "--strict", str(CHART), "-f", str(values))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


def test_schema_file_is_generated_and_current() -> None:
    done = subprocess.run([sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def _walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path or "/", schema)]
    for name, sub in (schema.get("properties") or {}).items():
        found += _walk(sub, f"{path}/{name}")
    if isinstance(schema.get("items"), dict):
        found += _walk(schema["items"], f"{path}[]")
    for variant in schema.get("oneOf", []):
        found += _walk(variant, path)
    return found


def test_schema_describes_every_value_and_closes_every_chart_object() -> None:
    undescribed, open_objects = [], []
    for path, node in _walk(_schema()):
        is_variant = "description" not in node and ("enum" in node or node.get("type") == "integer")
        if path != "/" and "description" not in node and not path.endswith("[]") and not is_variant:
            undescribed.append(path)
        if "properties" in node and node.get("additionalProperties") is not False and not path.endswith("[]"):
            open_objects.append(path)
    assert not undescribed, f"values without a description: {undescribed}"
    assert not open_objects, f"chart objects that accept unknown keys: {open_objects}"


def test_values_yaml_satisfies_schema_and_schema_covers_it() -> None:
    jsonschema.Draft7Validator(_schema()).validate(_defaults())
    # The schema is closed, so this also proves that every key of values.yaml is declared (and described).


@pytest.mark.parametrize("bad", [
    {"bogus": 1},
    {"workerDefaults": {"concurency": 2}},
    {"workers": [{"name": "x", "queue": ["celery"]}]},
    {"flower": {"auth": {"kind": "basic"}}},
    {"config": {"logLevel": "LOUD"}},
    {"workers": [{"name": "Bad_Name"}]},
    {"workers": [{"name": "x", "queues": ["no spaces"]}]},
    {"workers": [{"name": "x", "pool": "eventlet"}]},
    {"secret": {"extra": {"lower-case-dash": "x"}}},
    {"image": {"digest": "latest"}},
])
def test_schema_rejects(bad: dict[str, Any]) -> None:
    merged = _deep_merge(_defaults(), bad)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(_schema()).validate(merged)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else value
    return out


# -- the chart's config block against the image's declared options (config/options.py) ----------------------


@pytest.fixture(scope="module")
def options() -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    try:
        from config.options import BY_NAME
    except ImportError as exc:  # pragma: no cover - config/ belongs to another part of the repo
        pytest.skip(f"config.options cannot be imported: {exc}")
    return BY_NAME


def test_config_block_matches_image_options(options: dict[str, Any]) -> None:
    config = _defaults()["config"]
    assert set(config) - {"extra"} == set(CONFIG_ENV), "config keys and the CONFIG_ENV table differ"
    mismatched = {}
    for key, env in CONFIG_ENV.items():
        assert env in options, f"config.{key} maps to {env}, which config/options.py does not declare"
        option = options[env]
        assert not option.secret, f"{env} is secret and must not be in the ConfigMap"
        chart_default = config[key]
        if isinstance(chart_default, bool):
            chart_default = "yes" if chart_default else "no"
        if option.parse(str(chart_default)) != option.parse(option.default or ""):
            mismatched[key] = (config[key], option.default)
    assert not mismatched, f"chart defaults differ from the image's (chart, image): {mismatched}"


# Every image variable: the schema path of the value that sets it, or None with the reason the chart sets it itself.
OPTION_VALUES: dict[str, str | None] = {
    **{env: f"/config/{key}" for key, env in CONFIG_ENV.items()},
    "BROKER_URL": "/secret/brokerUrl", "CELERY_RESULT_BACKEND": "/secret/resultBackend",
    "DATABASE_URL": "/secret/databaseUrl", "MIGRATION_DATABASE_URL": "/secret/migrationDatabaseUrl",
    "FLOWER_BASIC_AUTH": "/secret/flowerBasicAuth", "TENANT_SIGNING_KEY": "/secret/tenantSigningKey",
    "DB_ENCRYPTION_KEY": "/secret/dbEncryptionKey", "GEMINI_API_KEY": "/secret/geminiApiKey",
    "AZURE_OPENAI_API_KEY": "/secret/azureOpenaiApiKey",
    "REDIS_SSL_CERT_REQS": "/redisTls/certReqs",
    "REDIS_SSL_CA_CERTS": None, "REDIS_SSL_CERTFILE": None, "REDIS_SSL_KEYFILE": None,  # paths of mounted files
    "CELERY_WORKER_CONCURRENCY": "/workerDefaults/concurrency",
    "CELERY_WORKER_PREFETCH_MULTIPLIER": "/workerDefaults/prefetchMultiplier",
    "CELERY_WORKER_MAX_TASKS_PER_CHILD": "/workerDefaults/maxTasksPerChild",
    "CELERY_WORKER_MAX_MEMORY_PER_CHILD": "/workerDefaults/maxMemoryPerChild",
    "CELERY_WORKER_LOGLEVEL": "/workerDefaults/loglevel", "CELERY_WORKER_QUEUES": "/workerDefaults/queues",
    "CELERY_WORKER_POOL": "/workerDefaults/pool", "CELERY_WORKER_HOSTNAME": "/workerDefaults/hostname",
    "CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT": "/workerDefaults/softShutdownTimeout",
    "CELERY_WORKER_MINGLE": "/workerDefaults/mingle",
    "CELERY_WORKER_OPTS": "/workerDefaults/extraArgs",
    "WORKER_HEALTH_DIR": None,  # always the image's default (FIXED_ENV), on the /tmp emptyDir
    "ENABLE_FLOWER": None,  # always no (FIXED_ENV): Flower is its own Deployment
    "FLOWER_PORT": "/flower/port", "FLOWER_UNAUTHENTICATED": None,  # from flower.auth.type none
    "API_TOKEN_SECRET": "/secret/apiTokenSecret", "API_PORT": "/api/port",
    "API_HOST": None,  # all addresses of the API pod, set by its Deployment
}


def _node(path: str) -> dict[str, Any]:
    node = _schema()
    for part in path.strip("/").split("/"):
        node = node["items"] if part == "items" else node["properties"][part]
    return node


def test_every_image_option_is_bounded_by_the_schema(options: dict[str, Any]) -> None:
    """The schema refuses, per field, what `python -m config check` refuses: same bounds, choices, patterns."""
    from config.options import FernetKeys, SigningKeys
    from config.spec import Choice, Integer, Pattern, Url

    assert set(OPTION_VALUES) == set(options), "map each new image variable to the value that sets it"
    for env, path in OPTION_VALUES.items():
        if path is None:
            continue
        parser, node = options[env].parser, _node(path)
        pool_node = _node(path.replace("/workerDefaults/", "/workers/items/")) if "workerDefaults" in path else None
        for n in filter(None, (node, pool_node)):
            if isinstance(parser, Integer):
                n = next((v for v in n.get("oneOf", []) if v.get("type") == "integer"), n)
                assert (n.get("minimum"), n.get("maximum")) == (parser.minimum, parser.maximum), path
            elif isinstance(parser, Choice):
                assert set(n["enum"]) <= set(parser.choices), path
            elif isinstance(parser, Pattern):
                patterns = [n.get("pattern")] + [v.get("pattern") for v in n.get("allOf", [])]
                assert f"^({parser.regex.pattern})?$" in patterns, path
            elif isinstance(parser, Url):
                assert "pattern" in n, f"{path}: no pattern, so any text reaches {env}"
                assert all(re.match(n["pattern"], f"{scheme}://host/0") for scheme in parser.schemes), path
                if "http" not in parser.schemes:
                    assert not re.match(n["pattern"], "http://host/0"), path
            elif isinstance(parser, FernetKeys):
                from cryptography.fernet import Fernet

                first, second = Fernet.generate_key().decode(), Fernet.generate_key().decode()
                for value in ("", first, f"{first}, {second}"):
                    parser.parse(value)
                    assert re.match(n["pattern"], value), (path, value)
                for value in (first[:-2], f"{first},", "k" * 44, f"{first} x"):
                    with pytest.raises(ValueError):
                        parser.parse(value)
                    assert not re.match(n["pattern"], value), (path, value)
            elif isinstance(parser, SigningKeys):
                # Random-looking keys: API_TOKEN_SECRET (TokenSecrets) also refuses keys like "kkk...".
                long_key, short_key = "9f2c1d7e4b8a6f3e0d5c2b9a8e7f6d5c", "9f2c1d7e4b8a6f3e0d5c2b9a8e7f6d5"
                for value in ("", long_key, f"{long_key}, {'Qm3xVt7Lp2Zr9Kw4Hs8Jd6Fb1Ng5Yc0aB7eR2'}"):
                    parser.parse(value)
                    assert re.match(n["pattern"], value), (path, value)
                for value in (short_key, f"{long_key},{short_key}", f"{long_key},", "k k" + "k" * 32):
                    with pytest.raises(ValueError):
                        parser.parse(value)
                    assert not re.match(n["pattern"], value), (path, value)


def test_every_rendered_variable_is_an_image_option(render: Any, options: dict[str, Any]) -> None:
    """A typo in a variable name would silently do nothing in the container."""
    from chart_support import env_of

    flower_only = {"FLOWER_URL_PREFIX", "FLOWER_PURGE_OFFLINE_WORKERS", "FLOWER_PERSISTENT", "FLOWER_AUTH",
                   "FLOWER_AUTH_PROVIDER", "FLOWER_OAUTH2_KEY", "FLOWER_OAUTH2_SECRET", "FLOWER_OAUTH2_REDIRECT_URI",
                   "FLOWER_COOKIE_SECRET"}  # read by Flower itself, not by config/options.py
    model_keys = {"OPENAI_API_KEY", "ANTHROPIC_API_KEY"}
    unknown: set[str] = set()
    for name in ("chart-secret", "flower-prefix-ingress", "flower-oauth-existing", "tls-ca-secret",
                 "existing-secret"):
        rendered = render(VALUE_SETS[name])
        for cm in rendered.all("ConfigMap"):
            if cm["metadata"]["name"].endswith("-redis-ca"):
                continue
            unknown |= set(cm["data"]) - set(options)
        for deployment in rendered.all("Deployment") + rendered.all("Job"):
            unknown |= set(env_of(deployment)) - set(options) - flower_only - model_keys
    assert not unknown, f"variables the image does not read: {sorted(unknown)}"


# -- the chart's copies of config/options.py are generated -------------------------------------------------------
GENERATED = ["values.schema.json", "values.yaml", "files/options.json"]


def _check_copy(chart: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(GENERATOR), "--check", "--chart", str(chart)], capture_output=True,
                          text=True, check=False)


@pytest.mark.parametrize("name", GENERATED)
def test_a_stale_generated_file_fails_the_check(tmp_path: Path, name: str) -> None:
    """Editing a generated copy by hand (here: a default in each file) is noticed and named."""
    import shutil

    copy = tmp_path / "worker"
    shutil.copytree(CHART, copy)
    assert _check_copy(copy).returncode == 0, "an unchanged copy of the chart is current"
    target = copy / name
    text = target.read_text()
    edited = text.replace("WORKER_HEARTBEAT_MAX_AGE", "WORKER_HEARTBEAT_MAXAGE", 1) if name.endswith(".json") \
        else text.replace("  workerHeartbeatMaxAge: 10\n", "  workerHeartbeatMaxAge: 11\n")
    assert edited != text
    target.write_text(edited)
    done = _check_copy(copy)
    assert done.returncode == 1 and f"{target} is stale" in done.stderr, done.stderr


def _generator() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("generate_schema", GENERATOR)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_config_block_holds_every_option_but_the_listed_ones(options: dict[str, Any]) -> None:
    """Each option is under config: (as the camelCase of its name), under secret:, or listed with its reason."""
    generator = _generator()
    not_in_config = {env for env, path in OPTION_VALUES.items() if path is None or not path.startswith("/config/")}
    secret = {env for env, option in options.items() if option.secret}
    assert not_in_config - secret == set(generator.NOT_IN_CONFIG)
    assert all(generator.config_key(env) == key for key, env in CONFIG_ENV.items())
    assert generator.config_key("REDIS_SOCKET_CONNECT_TIMEOUT") == "redisSocketConnectTimeout"


def test_health_dir_is_the_image_default_below_the_tmp_mount(options: dict[str, Any]) -> None:
    from chart_support import FIXED_ENV

    assert FIXED_ENV["WORKER_HEALTH_DIR"] == options["WORKER_HEALTH_DIR"].default
    assert FIXED_ENV["WORKER_HEALTH_DIR"].startswith("/tmp/")
    assert "/tmp/worker-health" not in (CHART / "templates" / "_helpers.tpl").read_text()


def test_chart_hostname_rule_is_the_image_rule_plus_the_pod_name(options: dict[str, Any]) -> None:
    """Same characters as CELERY_WORKER_HOSTNAME; stricter only in demanding %h or %n (docs/helm.md says why)."""
    chart = re.compile(_node("/workerDefaults/hostname")["pattern"])
    image = options["CELERY_WORKER_HOSTNAME"].parser.regex
    for code in range(32, 127):
        char = chr(code)
        if char in "%@":
            continue
        for name in (f"w{char}x@%h", f"w@{char}%h"):
            assert bool(chart.fullmatch(name)) == bool(image.fullmatch(name)), name
    assert image.fullmatch("worker@tenant") and not chart.fullmatch("worker@tenant")
