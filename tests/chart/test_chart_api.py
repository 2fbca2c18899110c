"""The task and run API in the chart: off by default; a Deployment running `entrypoint.sh api` behind a Service,
never without authentication; its Secret variables, probes, NetworkPolicy and NOTES."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from chart_support import (
    API_TOKEN_SECRET,
    CHART,
    FULLNAME,
    NAMESPACE,
    RELEASE,
    VALUE_SETS,
    container,
    env_of,
    pod_spec,
    run_helm,
)

API = f"{FULLNAME}-api"


def test_no_api_by_default(render: Any) -> None:
    rendered = render({})
    assert not [o for o in rendered.objects if o["metadata"]["name"].startswith(API)]


def test_the_api_runs_entrypoint_api_behind_a_service(render: Any) -> None:
    rendered = render(VALUE_SETS["api"])
    api = rendered.get("Deployment", API)
    c = container(api)
    assert c["args"] == ["api"]
    assert c["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    env = env_of(api)
    assert env["API_HOST"] == "0.0.0.0" and env["API_PORT"] == "8000"
    assert env["API_TOKEN_SECRET"] == ("secret", FULLNAME, "API_TOKEN_SECRET", False)
    for name in ("BROKER_URL", "CELERY_RESULT_BACKEND", "DATABASE_URL"):
        assert env[name] == ("secret", FULLNAME, name, False)
    # It publishes execute tasks: signed like any producer's when the workers verify signatures.
    assert env["TENANT_SIGNING_KEY"] == ("secret", FULLNAME, "TENANT_SIGNING_KEY", True)
    assert not {"MIGRATION_DATABASE_URL", "FLOWER_BASIC_AUTH", "DB_ENCRYPTION_KEY", "GEMINI_API_KEY"} & set(env)
    assert rendered.secret_data()["API_TOKEN_SECRET"] == API_TOKEN_SECRET
    assert API_TOKEN_SECRET not in json.dumps(api), "no secret inline in a pod"
    for worker in rendered.workers():
        assert "API_TOKEN_SECRET" not in env_of(worker), "the workers need no API key"
    spec = pod_spec(api)
    assert spec["automountServiceAccountToken"] is False
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert {m["mountPath"] for m in c["volumeMounts"]} == {"/tmp"}
    assert pod_spec(api)["containers"][0]["envFrom"] == [{"configMapRef": {"name": FULLNAME}}]
    service = rendered.get("Service", API)
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}]
    selector = service["spec"]["selector"]
    matched = [d["metadata"]["name"] for d in rendered.all("Deployment")
               if all(d["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in selector.items())]
    assert matched == [API], "the Service must reach the API and nothing else"


def test_the_api_with_an_existing_secret_and_its_own_authentication(render: Any) -> None:
    rendered = render(VALUE_SETS["api-existing-secret-own-auth"])
    api = rendered.get("Deployment", API)
    c = container(api)
    assert c["args"] == ["api", "--auth", "backend.auth:current_user"]
    assert api["spec"]["replicas"] == 3
    env = env_of(api)
    assert env["API_PORT"] == "9000" and env["HTTP_PROXY"] == "http://proxy:3128"
    # Optional once another authentication replaces the tokens.
    assert env["API_TOKEN_SECRET"] == ("secret", "tenant-worker-env", "API_TOKEN_SECRET", True)
    assert env["DATABASE_URL"] == ("secret", "tenant-worker-env", "DATABASE_URL", False)
    assert any(v.get("secret", {}).get("secretName") == "redis-ca" for v in pod_spec(api)["volumes"])
    assert len(c["volumeMounts"]) == 2, "/tmp and the Redis CA"
    assert api["spec"]["template"]["metadata"]["labels"]["team"] == "qa"
    service = rendered.get("Service", API)
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["metadata"]["annotations"] == {"cloud/internal": "true"}
    assert service["spec"]["ports"][0]["port"] == 443
    policy = rendered.get("NetworkPolicy", API)
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "api"
    assert policy["spec"]["ingress"] == [{"from": [{"podSelector": {"matchLabels": {"app": "backend"}}}],
                                          "ports": [{"protocol": "TCP", "port": 9000}]}]


@pytest.mark.parametrize(("values", "fragments"), [
    ({"api": {"enabled": True}}, ["api.enabled needs authentication", "secret.apiTokenSecret",
                                  "api.authDependency", "no unauthenticated mode"]),
    ({"secret": {"existingSecret": "env"}, "api": {"enabled": True}, "networkPolicy": {"enabled": True}},
     ["networkPolicy.apiFrom is empty"]),
    ({"secret": {"existingSecret": "env", "apiTokenSecret": "k" * 40}},
     ["secret.existingSecret is set together with secret values"]),
    ({"secret": {"apiTokenSecret": "k" * 31}}, ["apiTokenSecret"]),
    ({"api": {"enabled": True, "authDependency": "not a module"}}, ["/api/authDependency"]),
    ({"api": {"enabled": True, "port": 0}}, ["/api/port"]),
    ({"config": {"extra": {"API_TOKEN_SECRET": "x" * 40}}}, ["config.extra.API_TOKEN_SECRET", "Secret"]),
    ({"fullnameOverride": "c" * 62, "secret": {"existingSecret": "env"}, "api": {"enabled": True}},
     ["workers[default]", "also the name of the API"]),
])
def test_the_api_never_renders_without_authentication_or_with_a_bad_value(render_error: Any, values: dict,
                                                                          fragments: list[str]) -> None:
    message = render_error(values)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in helm's error:\n{message}"


def test_the_api_renders_at_the_edges_of_those_rules(render: Any) -> None:
    render({"secret": {"existingSecret": "env"}, "api": {"enabled": True}})  # the key must be in that Secret
    render({"api": {"enabled": True, "authDependency": "backend.auth:current_user"}})
    render({"secret": {"apiTokenSecret": "k" * 32}, "api": {"enabled": True}})


def test_notes_tell_how_to_reach_the_api(helm_bin: Path, tmp_path: Path) -> None:
    values = tmp_path / "values.json"
    values.write_text(json.dumps(VALUE_SETS["api"]))
    done = run_helm(helm_bin, "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client",
                    "-f", str(values))
    assert done.returncode == 0, done.stderr
    notes = done.stdout.split("NOTES:", 1)[1]
    assert f"port-forward service/{API} 8000:8000" in notes and "http://127.0.0.1:8000/docs" in notes
    assert f"exec deployment/{API} -- /usr/local/bin/entrypoint.sh api-token" in notes
