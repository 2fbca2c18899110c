"""A rendered chart never starts a container that the image's own configuration check refuses.

The image runs `python -m config check` (and, for a worker, `python -m config worker-args`) in entrypoint.sh
before anything starts and exits 64 on a bad value; a chart that renders such a value makes every pod (and the
pre-install migration hook) crash-loop. So:

* every container of every value set of the render matrix gets its environment resolved as Kubernetes would
  (image_config.py) and must pass the real CLI, and entrypoint.sh must get as far as exec'ing celery;
* over the image's cross-field rules (config/loader.py _check_together), and the per-pool values the image
  parses itself: helm template succeeds <=> the image accepts every rendered container's environment.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from chart_support import CA_PEM, CHART_SECRET, CONFIG_ENV, FULLNAME, VALUE_SETS, Rendered, RenderError
from image_config import (
    Container,
    check_in_process,
    image_containers,
    make_shim,
    run_config,
    run_entrypoint,
)

from config.options import BY_NAME, OPTIONS


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shim(tmp_path_factory.mktemp("shim"))


def _entrypoint_problem(c: Container, shim: Path) -> str | None:
    """entrypoint.sh worker|flower must pass its checks (config, worker-args, Flower's auth) and exec celery."""
    done = run_entrypoint(c, shim)
    role = (c.args or ["worker"])[0]
    argv = done.stdout.split("\0")
    if done.returncode != 0 or argv[:4] != ["celery", "-A", "worker.app", role]:
        return f"entrypoint.sh {role} exited {done.returncode}, argv {argv[:4]}: {done.stderr.strip()[-600:]}"
    return None


def _problems(c: Container, shim: Path) -> list[str]:
    problems = []
    done = run_config(c, "check")
    if done.returncode != 0:
        problems.append(f"python -m config check exited {done.returncode}: {done.stderr.strip()}")
    if c.runs_worker:
        done = run_config(c, "worker-args")
        argv = done.stdout.split("\0")
        if done.returncode != 0 or argv[:4] != ["celery", "-A", "worker.app", "worker"]:
            problems.append(f"python -m config worker-args exited {done.returncode}: {done.stderr.strip()}")
        elif argv[argv.index("--queues") + 1] != c.env["CELERY_WORKER_QUEUES"]:
            problems.append(f"worker-args consumes {argv[argv.index('--queues') + 1]!r}, not the pool's queues")
    if (c.args or ["worker"])[0] in ("worker", "flower"):
        problem = _entrypoint_problem(c, shim)
        if problem:
            problems.append(problem)
    return [f"{c.label}: {p}" for p in problems]


# -- 1. the render matrix, through the real CLI and entrypoint ------------------------------------------------------
@pytest.mark.parametrize("values_set", sorted(VALUE_SETS))
def test_every_rendered_container_passes_the_image_config_check(render: Any, values_set: str, tmp_path: Path,
                                                                shim: Path) -> None:
    """Containers Kubernetes would not start (a key missing in the chart's own Secret, e.g. no secret values at
    all) are checked anyway, with those variables unset."""
    values = VALUE_SETS[values_set]
    containers = image_containers(render(values), values, tmp_path)
    assert any(c.runs_worker for c in containers), "no worker container found"
    problems = [p for c in containers for p in _problems(c, shim)]
    assert not problems, "\n".join(problems)


def test_matrix_covers_every_container_kind(render: Any, tmp_path: Path) -> None:
    """The matrix reaches workers, Flower (basic, OAuth, unauthenticated) and the migration hook, with mounted
    TLS files and with values supplied for an existing Secret."""
    seen: set[str] = set()
    supplied = []
    for name, values in VALUE_SETS.items():
        for c in image_containers(render(values), values, tmp_path / name):
            seen.add((c.args or ["worker"])[0])
            supplied += c.supplied
            if "REDIS_SSL_CERTFILE" in c.env:
                seen.add("client-cert")
                assert Path(c.env["REDIS_SSL_CERTFILE"]).is_file() and Path(c.env["REDIS_SSL_KEYFILE"]).is_file()
    assert seen >= {"worker", "flower", "migrate", "client-cert"}
    assert any("BROKER_URL" in s for s in supplied) and any("tls.key" in s for s in supplied)


def _patched(rendered: Rendered, name: str, value: str) -> Rendered:
    copy = Rendered(rendered.text)
    copy.objects = json.loads(json.dumps(rendered.objects))
    copy.get("ConfigMap", FULLNAME)["data"][name] = value
    return copy


def test_the_check_sees_what_the_chart_renders(render: Any, tmp_path: Path, shim: Path) -> None:
    """Self-test: the harness passes the chart's values to the image, so a bad one fails the matrix test."""
    values = VALUE_SETS["flower"]
    rendered = _patched(render(values), "TASK_SOFT_TIME_LIMIT", "4000")
    for c in image_containers(rendered, values, tmp_path):
        if c.name == "migrate":
            continue  # its settings are inline, not from the ConfigMap
        problems = _problems(c, shim)
        assert problems and "TASK_SOFT_TIME_LIMIT=4000 is not below TASK_TIME_LIMIT=3600" in problems[0], c.label
    # and a missing mounted file is noticed (REDIS_SSL_CA_CERTS must be a readable file)
    values = VALUE_SETS["tls-ca-pem"]
    worker = next(c for c in image_containers(render(values), values, tmp_path / "ca") if c.runs_worker)
    Path(worker.env["REDIS_SSL_CA_CERTS"]).unlink()
    assert "REDIS_SSL_CA_CERTS" in " ".join(_problems(worker, shim))


# -- 2. helm template succeeds <=> the image accepts it -------------------------------------------------------
BASE = {"secret": CHART_SECRET, "flower": {"enabled": True},
        "redisTls": {"ca": {"pem": CA_PEM}, "clientCert": {"existingSecret": "redis-client"}}}
# Values that satisfy every cross-field rule with room to spare; each case varies some of them.
ROOMY = {"taskTimeLimit": 3600, "taskSoftTimeLimit": 3300, "brokerVisibilityTimeout": 604800, "taskMaxCountdown": 600,
         "taskRetryBackoffMax": 600, "workerHeartbeatInterval": 10, "workerHeartbeatMaxAge": 60}


def _bounds(key: str) -> tuple[int, int]:
    parser = BY_NAME[CONFIG_ENV[key]].parser
    return parser.minimum, parser.maximum


def cross_field_grid() -> list[dict[str, int]]:
    """Config values around every boundary of the cross-field rules and the fields' own bounds (deterministic)."""
    grid = []
    for hard in (1, 2, 3600, 86400):  # soft < hard
        for soft in sorted({1, hard - 1, hard, hard + 1, 86400}):
            grid.append({**ROOMY, "taskTimeLimit": hard, "taskSoftTimeLimit": soft})
    for hard in (2, 3600):  # visibility > hard + max(countdown, backoff); either of the two may be the larger
        for countdown, backoff in ((0, 1), (600, 600), (0, 86400), (86400, 1), (100, 5000), (5000, 100),
                                   (604800, 1)):
            needed = hard + max(countdown, backoff)
            for visibility in (needed - 1, needed, needed + 1):
                grid.append({**ROOMY, "taskTimeLimit": hard, "taskSoftTimeLimit": hard - 1,
                             "taskMaxCountdown": countdown, "taskRetryBackoffMax": backoff,
                             "brokerVisibilityTimeout": visibility})
    for interval in (1, 10, 3600):  # max age > interval
        for age in sorted({1, 2, interval - 1, interval, interval + 1, 86400}):
            grid.append({**ROOMY, "workerHeartbeatInterval": interval, "workerHeartbeatMaxAge": age})
    for key in ROOMY:  # each field's own bounds
        low, high = _bounds(key)
        for value in (low - 1, low, high, high + 1):
            grid.append({**ROOMY, key: value})
    rng = random.Random(7)  # near-boundary mixtures of all three rules at once
    for _ in range(25):
        hard = rng.randint(1, 5000)
        countdown, backoff = rng.choice([0, rng.randint(0, 3000)]), rng.randint(1, 3000)
        interval = rng.randint(1, 100)
        grid.append({"taskTimeLimit": hard, "taskSoftTimeLimit": hard + rng.randint(-3, 1),
                     "taskMaxCountdown": countdown, "taskRetryBackoffMax": backoff,
                     "brokerVisibilityTimeout": max(60, hard + max(countdown, backoff) + rng.randint(-2, 2)),
                     "workerHeartbeatInterval": interval, "workerHeartbeatMaxAge": interval + rng.randint(-2, 2)})
    return grid


@pytest.fixture(scope="module")
def baseline(render: Any, tmp_path_factory: pytest.TempPathFactory) -> list[Container]:
    return image_containers(render(BASE), BASE, tmp_path_factory.mktemp("baseline"))


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


EnvFor = Callable[[Container], dict[str, str]]


def everywhere(env: dict[str, str]) -> EnvFor:
    return lambda c: env


def in_workers(env: dict[str, str]) -> EnvFor:
    return lambda c: env if c.runs_worker else {}


def outside_workers(env: dict[str, str]) -> EnvFor:
    """Variables the worker container sets itself (CELERY_WORKER_*), so only the others take them from values."""
    return lambda c: {} if c.runs_worker else env


def assert_helm_agrees_with_image(render: Any, baseline: list[Container], tmp_path: Path, over: dict[str, Any],
                                  env_for: EnvFor, names: list[str]) -> None:
    """values render <=> the image accepts the environment of every container they give.

    env_for(container) are the variables `values` set in that container. When helm refuses, the verdict is the
    image's on the baseline containers with those variables set: what the pods would have run had the chart
    rendered. `names` are value names of which helm's message must mention one. `over` is merged over BASE.
    """
    values = _merge(BASE, over)
    try:
        rendered = render(values)
    except RenderError as exc:
        verdicts = [check_in_process({**c.env, **env_for(c)}, c.runs_worker) for c in baseline]
        assert any(verdicts), f"helm refuses values the image accepts: {json.dumps(over)}\nhelm: {exc}"
        assert any(n in str(exc) for n in names), f"helm's message names none of {names}: {exc}"
        return
    refused = []
    for c in image_containers(rendered, values, tmp_path):
        # The rendered environment carries the values (so the prediction above models the chart) ...
        expected = env_for(c)
        assert {k: c.env.get(k) for k in expected} == expected, c.label
        # ... and the image accepts it.
        verdict = check_in_process(c.env, c.runs_worker)
        if verdict:
            refused.append(f"{c.label}: {verdict}")
    assert not refused, f"helm renders values the image refuses: {json.dumps(over)}\n" + "\n".join(refused)


def test_cross_field_rules_helm_renders_exactly_what_the_image_accepts(
        render: Any, baseline: list[Container], tmp_path: Path) -> None:
    grid = cross_field_grid()
    outcomes = {"rendered": 0, "refused": 0}
    disagreements = []
    for i, config in enumerate(grid):
        env = {CONFIG_ENV[k]: str(v) for k, v in config.items()}
        try:
            assert_helm_agrees_with_image(render, baseline, tmp_path / str(i), {"config": config}, everywhere(env),
                                          list(config))
        except AssertionError as exc:
            disagreements.append(str(exc).splitlines()[0])
        try:
            render(_merge(BASE, {"config": config}))
            outcomes["rendered"] += 1
        except RenderError:
            outcomes["refused"] += 1
    assert not disagreements, f"{len(disagreements)} of {len(grid)} cases:\n" + "\n".join(disagreements)
    # The grid straddles the boundaries: both outcomes occur often.
    assert min(outcomes.values()) > len(grid) // 5, outcomes


def _option_names() -> list[str]:
    return [o.name for o in OPTIONS]


# values over BASE -> (the variables they set in each container, value names helm's refusal must mention one of).
# Secret URLs: the schema checks scheme and (Redis) host; a malformed port is left to the image (not covered here).
POOL_CASES: dict[str, tuple[dict[str, Any], EnvFor, list[str]]] = {
    **{f"extraArgs {args!r}": ({"workers": [{"name": "default", "extraArgs": args}]},
                               in_workers({"CELERY_WORKER_OPTS": args}), ["extraArgs"])
       # Quoting cases carry their words as the value of a real option: the image parses the split words with
       # celery worker's own options (an unknown option or a bare word is refused there, which no schema can see).
       for args in ("", "--without-gossip -O fair", "--include 'a b'", "'unbalanced", '"open', "trailing\\",
                    '--include "a \\" b"', "it's", '--include "it\'s"', "--include a\\'b", "--include 'a\\'",
                    '--include "a\\\\"', "'")},
    **{f"hostname {name!r}": ({"workers": [{"name": "default", "hostname": name}]},
                              in_workers({"CELERY_WORKER_HOSTNAME": name or "default@%h"}), ["hostname"])
       for name in ("", "w@%h", "%h", "w-%n@%d", "@%h", "%h@", "w@x@%h", "w@@%h", "w %h", "w@%h%%")},
    **{f"mingle {flag}": ({"workers": [{"name": "default", "mingle": flag}]},
                          in_workers({"CELERY_WORKER_MINGLE": word}), ["mingle"])
       for flag, word in ((True, "yes"), (False, "no"))},
    # "auto" reaches the image as it is, which sizes it at launch (also above its own maximum: it clamps).
    "maxMemoryPerChild auto with a limit above the image's maximum": (
        {"workers": [{"name": "default", "concurrency": 1, "resources": {"limits": {"memory": "2Ti"}}}]},
        in_workers({"CELERY_WORKER_MAX_MEMORY_PER_CHILD": "auto"}), ["maxMemoryPerChild"]),
    "maxMemoryPerChild auto without a limit": (
        {"workers": [{"name": "default", "resources": {"limits": {"memory": None}}}]},
        in_workers({"CELERY_WORKER_MAX_MEMORY_PER_CHILD": "auto"}), ["maxMemoryPerChild"]),
    **{f"maxMemoryPerChild {kib}": ({"workers": [{"name": "default", "maxMemoryPerChild": kib}]},
                                    in_workers({"CELERY_WORKER_MAX_MEMORY_PER_CHILD": str(kib)}), ["maxMemoryPerChild"])
       for kib in (0, BY_NAME["CELERY_WORKER_MAX_MEMORY_PER_CHILD"].parser.maximum,
                   BY_NAME["CELERY_WORKER_MAX_MEMORY_PER_CHILD"].parser.maximum + 1, -1)},
    "config.extra overriding TASK_SOFT_TIME_LIMIT": (
        {"config": {"extra": {"TASK_SOFT_TIME_LIMIT": "4000"}}}, everywhere({"TASK_SOFT_TIME_LIMIT": "4000"}),
        ["config.extra.TASK_SOFT_TIME_LIMIT"]),
    "config.extra overriding CELERY_WORKER_CONCURRENCY": (  # Flower and the migration read the ConfigMap's
        {"config": {"extra": {"CELERY_WORKER_CONCURRENCY": "0"}}}, outside_workers({"CELERY_WORKER_CONCURRENCY": "0"}),
        ["config.extra.CELERY_WORKER_CONCURRENCY"]),
    "secret.extra overriding TASK_TIME_LIMIT": (
        {"secret": {"extra": {"TASK_TIME_LIMIT": "10"}}}, in_workers({"TASK_TIME_LIMIT": "10"}),
        ["secret.extra.TASK_TIME_LIMIT"]),
    "secret.extra setting BROKER_URL_FILE": (
        {"secret": {"extra": {"BROKER_URL_FILE": "/nonexistent"}}}, in_workers({"BROKER_URL_FILE": "/nonexistent"}),
        ["secret.extra.BROKER_URL_FILE"]),
    **{f"secret.{key} {url!r}": ({"secret": {key: url}}, in_workers({env: url}), [f"/secret/{key}"])
       for key, env, url in (("brokerUrl", "BROKER_URL", "http://redis:6379/0"),
                             ("brokerUrl", "BROKER_URL", "redis://:pw@/0"),
                             ("brokerUrl", "BROKER_URL", "rediss://:p@ss@redis:6380/0"),
                             ("resultBackend", "CELERY_RESULT_BACKEND", "redis:6379/1"),
                             ("databaseUrl", "DATABASE_URL", "mysql://db/tenants"),
                             ("databaseUrl", "DATABASE_URL", "postgresql:///tenants"))},
    "config.extra with a variable newer than the chart": (
        {"config": {"extra": {"SOME_NEW_OPTION": "on"}}}, everywhere({"SOME_NEW_OPTION": "on"}), ["config.extra"]),
}


@pytest.mark.parametrize("case", sorted(POOL_CASES))
def test_values_the_image_parses_itself_helm_renders_exactly_what_the_image_accepts(
        render: Any, baseline: list[Container], tmp_path: Path, case: str) -> None:
    over, env_for, names = POOL_CASES[case]
    assert_helm_agrees_with_image(render, baseline, tmp_path, over, env_for, names)


def test_extra_variables_cannot_shadow_any_image_option(render: Any) -> None:
    """config.extra, secret.extra and secret.extraKeys are for variables the image does not declare: the chart
    knows every declared one (an option added to config/options.py without the chart's list fails here)."""
    secret_options = [o.name for o in OPTIONS if o.secret]
    public = [n for n in _option_names() if n not in secret_options]
    cases = [
        ({"config": {"extra": dict.fromkeys(public, "1")}}, "config.extra", public),
        ({"secret": {**CHART_SECRET, "extra": dict.fromkeys(_option_names(), "1")}}, "secret.extra", _option_names()),
        ({"secret": {"existingSecret": "env", "extraKeys": _option_names()}}, "secret.extraKeys", _option_names()),
        ({"secret": {**CHART_SECRET, "extra": {f"{n}_FILE": "/x" for n in secret_options}}}, "secret.extra",
         [f"{n}_FILE" for n in secret_options]),
    ]
    for values, where, names in cases:
        try:
            render(values)
        except RenderError as exc:
            missing = [n for n in names if f"{where}.{n}" not in str(exc)]
            assert not missing, f"{where}: helm's message does not name {missing}:\n{exc}"
        else:
            raise AssertionError(f"{where} with the image's own variables rendered")
