"""Secrets, Redis TLS, Flower, autoscaling, NetworkPolicy, the migration hook and NOTES.txt."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from chart_support import (
    CA_PEM,
    CHART,
    CHART_SECRET,
    FULLNAME,
    RELEASE,
    VALUE_SETS,
    container,
    env_of,
    pod_spec,
    run_helm,
)

FLOWER = f"{FULLNAME}-flower"


def _labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _volume(obj: dict[str, Any], name: str) -> dict[str, Any]:
    return next(v for v in pod_spec(obj)["volumes"] if v["name"] == name)


def _mounts(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in container(obj)["volumeMounts"]}


# -- secrets -------------------------------------------------------------------------------------------------------
def test_chart_created_secret_holds_the_values(render: Any) -> None:
    rendered = render(VALUE_SETS["chart-secret"])
    assert rendered.secret_data() == {
        "BROKER_URL": CHART_SECRET["brokerUrl"], "CELERY_RESULT_BACKEND": CHART_SECRET["resultBackend"],
        "DATABASE_URL": CHART_SECRET["databaseUrl"], "MIGRATION_DATABASE_URL": CHART_SECRET["migrationDatabaseUrl"],
        "FLOWER_BASIC_AUTH": CHART_SECRET["flowerBasicAuth"], "REDIS_PASSWORD": "redis-pw", "OPENAI_API_KEY": "sk-test",
    }
    env = env_of(rendered.worker())
    assert env["OPENAI_API_KEY"] == ("secret", FULLNAME, "OPENAI_API_KEY", False)
    assert "FLOWER_BASIC_AUTH" not in env and "MIGRATION_DATABASE_URL" not in env, "workers get what they need"
    assert "redis-pw" not in json.dumps(rendered.get("ConfigMap", FULLNAME))
    for obj in rendered.all("Deployment") + rendered.all("Job"):
        assert "redis-pw" not in json.dumps(obj) and "db-pw" not in json.dumps(obj), "no secret inline in a pod"


def test_empty_secret_values_are_left_out(render: Any) -> None:
    rendered = render({})
    assert rendered.secret_data() == {}
    notes = rendered.text
    assert "BROKER_URL" not in notes.split("kind: Secret", 1)[1].split("---", 1)[0]


def test_existing_secret_is_used_everywhere(render: Any) -> None:
    rendered = render(VALUE_SETS["existing-secret"])
    assert not rendered.all("Secret"), "the chart must not create a Secret (also not for the migration hook)"
    env = env_of(rendered.worker())
    for name in ("BROKER_URL", "CELERY_RESULT_BACKEND", "DATABASE_URL", "OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        assert env[name] == ("secret", "tenant-worker-env", name, False)
    job_env = env_of(rendered.get("Job", f"{FULLNAME}-migrate"))
    assert job_env["MIGRATION_DATABASE_URL"] == ("secret", "tenant-worker-env", "MIGRATION_DATABASE_URL", True)
    assert job_env["DATABASE_URL"] == ("secret", "tenant-worker-env", "DATABASE_URL", False)


def test_secret_key_names_are_configurable(render: Any) -> None:
    rendered = render({"secret": {"existingSecret": "vault-synced", "keys": {
        "brokerUrl": "broker", "resultBackend": "backend", "databaseUrl": "db", "migrationDatabaseUrl": "db-owner",
        "flowerBasicAuth": "flower", "flowerOauth2Key": "k", "flowerOauth2Secret": "s", "flowerCookieSecret": "c",
        "redisPassword": "redis"}}, "flower": {"enabled": True}})
    env = env_of(rendered.worker())
    assert env["BROKER_URL"] == ("secret", "vault-synced", "broker", False)
    assert env["DATABASE_URL"] == ("secret", "vault-synced", "db", False)
    assert env_of(rendered.get("Deployment", FLOWER))["FLOWER_BASIC_AUTH"] == ("secret", "vault-synced", "flower",
                                                                             False)


# -- Redis TLS ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("values_set", "source", "source_name", "key"), [
    ("tls-ca-secret", "secret", "redis-ca", "ca.pem"),
    ("tls-ca-configmap", "configMap", "redis-ca-bundle", "ca.crt"),
    ("tls-ca-pem", "configMap", f"{FULLNAME}-redis-ca", "ca.crt"),
])
def test_ca_bundle_is_mounted_read_only_and_wired(render: Any, values_set: str, source: str, source_name: str,
                                                  key: str) -> None:
    rendered = render(VALUE_SETS[values_set])
    data = rendered.get("ConfigMap", FULLNAME)["data"]
    assert data["REDIS_SSL_CERT_REQS"] == "required"
    deployments = rendered.all("Deployment")
    for obj in deployments:
        volume = _volume(obj, "redis-ca")
        name_key = "secretName" if source == "secret" else "name"
        assert volume[source][name_key] == source_name
        assert volume[source]["items"] == [{"key": key, "path": "ca.crt"}]
        assert volume[source]["defaultMode"] == 0o440
        mount = _mounts(obj)["redis-ca"]
        assert mount["readOnly"] is True
        assert data["REDIS_SSL_CA_CERTS"] == mount["mountPath"] + "/ca.crt"
    if values_set == "tls-ca-pem":
        assert rendered.get("ConfigMap", source_name)["data"]["ca.crt"].strip() == CA_PEM.strip()
    job = rendered.get("Job", f"{FULLNAME}-migrate")
    assert "redis-ca" not in _mounts(job), "the pre-install hook cannot mount a ConfigMap that does not exist yet"


def test_client_certificate_for_mutual_tls(render: Any) -> None:
    rendered = render(VALUE_SETS["tls-ca-secret"])
    data = rendered.get("ConfigMap", FULLNAME)["data"]
    worker = rendered.worker()
    volume = _volume(worker, "redis-client-cert")["secret"]
    assert volume["secretName"] == "redis-client"
    assert volume["items"] == [{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}]
    mount = _mounts(worker)["redis-client-cert"]
    assert mount["readOnly"] is True
    assert data["REDIS_SSL_CERTFILE"] == mount["mountPath"] + "/tls.crt"
    assert data["REDIS_SSL_KEYFILE"] == mount["mountPath"] + "/tls.key"


def test_no_tls_material_by_default(render: Any) -> None:
    rendered = render({})
    data = rendered.get("ConfigMap", FULLNAME)["data"]
    assert "REDIS_SSL_CA_CERTS" not in data and "REDIS_SSL_CERTFILE" not in data
    assert set(_mounts(rendered.worker())) == {"tmp"}


# -- Flower ---------------------------------------------------------------------------------------------------------
def test_flower_runs_alone_with_basic_auth(render: Any) -> None:
    rendered = render(VALUE_SETS["flower"])
    flower = rendered.get("Deployment", FLOWER)
    c = container(flower)
    assert c["args"] == ["flower"]
    env = env_of(flower)
    assert env["FLOWER_BASIC_AUTH"] == ("secret", FULLNAME, "FLOWER_BASIC_AUTH", False)
    assert env["BROKER_URL"] == ("secret", FULLNAME, "BROKER_URL", False)
    assert env["FLOWER_PORT"] == "5555"
    assert env["FLOWER_URL_PREFIX"] == ""
    assert "FLOWER_UNAUTHENTICATED" not in env
    assert int(env["FLOWER_PURGE_OFFLINE_WORKERS"]) > 0
    assert c["ports"] == [{"name": "http", "containerPort": 5555, "protocol": "TCP"}]
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthcheck", "port": "http"}
    for worker in rendered.workers():
        assert env_of(worker).get("ENABLE_FLOWER") in (None, "no")
    assert rendered.get("ConfigMap", FULLNAME)["data"]["ENABLE_FLOWER"] == "no"
    service = rendered.get("Service", FLOWER)
    assert service["spec"]["ports"] == [{"name": "http", "port": 5555, "targetPort": "http", "protocol": "TCP"}]
    selector = service["spec"]["selector"]
    matched = [d["metadata"]["name"] for d in rendered.all("Deployment")
               if _labels_match(selector, d["spec"]["template"]["metadata"]["labels"])]
    assert matched == [FLOWER], "the Service must reach Flower and nothing else"


def test_flower_url_prefix_reaches_flower_probes_and_ingress(render: Any) -> None:
    rendered = render(VALUE_SETS["flower-prefix-ingress"])
    flower = rendered.get("Deployment", FLOWER)
    assert env_of(flower)["FLOWER_URL_PREFIX"] == "flower"
    c = container(flower)
    assert c["livenessProbe"]["httpGet"]["path"] == "/flower/healthcheck"
    assert c["readinessProbe"]["httpGet"]["path"] == "/flower/healthcheck"
    ingress = rendered.get("Ingress", FLOWER)["spec"]
    assert ingress["ingressClassName"] == "nginx"
    assert ingress["tls"] == [{"secretName": "ops-tls", "hosts": ["ops.example.com"]}]
    (rule,) = ingress["rules"]
    assert rule["host"] == "ops.example.com"
    (path,) = rule["http"]["paths"]
    assert path["path"] == "/flower" and path["pathType"] == "Prefix"
    backend = path["backend"]["service"]
    service = rendered.get("Service", backend["name"])
    assert backend["port"]["name"] in [p["name"] for p in service["spec"]["ports"]]


def test_flower_oauth_from_existing_secret(render: Any) -> None:
    rendered = render(VALUE_SETS["flower-oauth-existing"])
    env = env_of(rendered.get("Deployment", FLOWER))
    assert env["FLOWER_AUTH_PROVIDER"] == "flower.views.auth.GithubLoginHandler"
    assert env["FLOWER_AUTH"] == ".*@example\\.com"
    assert env["FLOWER_OAUTH2_REDIRECT_URI"] == "https://ops.example.com/login"
    assert env["FLOWER_OAUTH2_KEY"] == ("secret", "tenant-worker-env", "FLOWER_OAUTH2_KEY", False)
    assert env["FLOWER_OAUTH2_SECRET"] == ("secret", "tenant-worker-env", "FLOWER_OAUTH2_SECRET", False)
    assert env["FLOWER_COOKIE_SECRET"] == ("secret", "tenant-worker-env", "FLOWER_COOKIE_SECRET", True)
    assert "FLOWER_BASIC_AUTH" not in env


def test_flower_without_auth_only_when_allowed(render: Any) -> None:
    env = env_of(render(VALUE_SETS["flower-unauthenticated"]).get("Deployment", FLOWER))
    assert env["FLOWER_UNAUTHENTICATED"] == "yes"
    assert "FLOWER_BASIC_AUTH" not in env


# -- autoscaling ------------------------------------------------------------------------------------------------------
def test_hpa_per_pool(render: Any) -> None:
    rendered = render(VALUE_SETS["hpa"])
    worker = rendered.worker()
    assert "replicas" not in worker["spec"], "the HPA owns the replica count; helm upgrade must not reset it"
    hpa = rendered.get("HorizontalPodAutoscaler", worker["metadata"]["name"])["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": worker["metadata"]["name"]}
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (1, 8)
    targets = {m["resource"]["name"]: m["resource"]["target"]["averageUtilization"] for m in hpa["metrics"]}
    assert targets == {"cpu": 80, "memory": 75}
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300
    assert not rendered.all("ScaledObject")


def test_keda_scaled_object_per_pool_on_its_queues(render: Any) -> None:
    rendered = render(VALUE_SETS["keda"])
    default, heavy = rendered.worker("default"), rendered.worker("heavy")
    assert "replicas" not in default["spec"] and "replicas" not in heavy["spec"]
    (scaled,) = rendered.all("ScaledObject")
    assert scaled["metadata"]["name"] == default["metadata"]["name"]
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == default["metadata"]["name"]
    assert spec["minReplicaCount"] == 0
    (auth,) = rendered.all("TriggerAuthentication")
    lists = []
    for trigger in spec["triggers"]:
        assert trigger["type"] == "redis"
        meta = trigger["metadata"]
        assert meta["address"] == "redis.data:6380"
        assert meta["enableTLS"] == "true"
        assert meta["listLength"] == "10"
        assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
        lists.append(meta["listName"])
    assert lists == ["prod:celery", "prod:execution"], "one trigger per queue, with the key prefix"
    # heavy uses an HPA instead
    assert rendered.get("HorizontalPodAutoscaler", heavy["metadata"]["name"])
    refs = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    assert refs == {"password": (FULLNAME, "REDIS_PASSWORD"), "cert": ("redis-client", "tls.crt"),
                    "key": ("redis-client", "tls.key")}
    assert auth["spec"]["configMapTargetRef"] == [{"parameter": "ca", "name": f"{FULLNAME}-redis-ca", "key": "ca.crt"}]
    assert rendered.secret_data()["REDIS_PASSWORD"] == "redis-pw"


def test_keda_without_password_or_tls_needs_no_trigger_authentication(render: Any) -> None:
    rendered = render(VALUE_SETS["keda-plain"])
    assert not rendered.all("TriggerAuthentication")
    (scaled,) = rendered.all("ScaledObject")
    assert all("authenticationRef" not in t for t in scaled["spec"]["triggers"])
    assert [t["metadata"]["listName"] for t in scaled["spec"]["triggers"]] == ["celery", "execution"]


def test_keda_ca_from_existing_secret(render: Any) -> None:
    rendered = render({"keda": {"redis": {"address": "r:6380", "tls": True}},
                       "redisTls": {"ca": {"existingSecret": "redis-ca"}},
                       "secret": {"existingSecret": "env"},
                       "workerDefaults": {"autoscaling": {"keda": {"enabled": True}}}})
    (auth,) = rendered.all("TriggerAuthentication")
    refs = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    assert refs == {"password": ("env", "REDIS_PASSWORD"), "ca": ("redis-ca", "ca.crt")}
    assert "configMapTargetRef" not in auth["spec"]


# -- NetworkPolicy --------------------------------------------------------------------------------------------------
def test_network_policy_allows_dns_redis_postgresql_only(render: Any) -> None:
    rendered = render(VALUE_SETS["network-policy"])
    policy = rendered.get("NetworkPolicy", FULLNAME)["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["ingress"] == []
    ports = [sorted((p["protocol"], p["port"]) for p in rule["ports"]) for rule in policy["egress"]]
    assert ports == [[("TCP", 53), ("UDP", 53)], [("TCP", 6379)], [("TCP", 5432)], [("TCP", 443)]]
    assert policy["egress"][1]["to"] == [{"podSelector": {"matchLabels": {"app": "redis"}}}]
    assert policy["egress"][2]["to"] == [{"ipBlock": {"cidr": "10.0.0.0/16"}}]
    pods = rendered.all("Deployment") + rendered.all("Job")
    for obj in pods:
        assert _labels_match(policy["podSelector"]["matchLabels"], obj["spec"]["template"]["metadata"]["labels"])
    flower_policy = rendered.get("NetworkPolicy", FLOWER)["spec"]
    assert flower_policy["policyTypes"] == ["Ingress"]
    (rule,) = flower_policy["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 5555}]
    assert rule["from"] == VALUE_SETS["network-policy"]["networkPolicy"]["flowerFrom"]
    selected = [o["metadata"]["name"] for o in pods
                if _labels_match(flower_policy["podSelector"]["matchLabels"],
                                 o["spec"]["template"]["metadata"]["labels"])]
    assert selected == [FLOWER]


@pytest.mark.parametrize("values_set", ["network-policy-oauth-ingress"])
def test_network_policy_lets_flower_reach_its_oauth_provider(render: Any, values_set: str) -> None:
    rendered = render(VALUE_SETS[values_set])
    flower_policy = rendered.get("NetworkPolicy", FLOWER)["spec"]
    assert flower_policy["policyTypes"] == ["Ingress", "Egress"]
    assert flower_policy["egress"] == [{"ports": [{"protocol": "TCP", "port": 443}],
                                        "to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}]}]
    assert flower_policy["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "flower"
    (rule,) = flower_policy["ingress"]
    assert rule["from"] == VALUE_SETS[values_set]["networkPolicy"]["flowerFrom"]
    release_policy = rendered.get("NetworkPolicy", FULLNAME)["spec"]
    assert all(p["port"] != 443 for r in release_policy["egress"] for p in r["ports"]), "workers get no 443"
    # Default: any destination on 443, for the Flower pods only.
    values = {**VALUE_SETS[values_set], "networkPolicy": {**VALUE_SETS[values_set]["networkPolicy"],
                                                          "flowerOAuthEgress": {"ports": [443]}}}
    default = render(values).get("NetworkPolicy", FLOWER)["spec"]
    assert default["egress"] == [{"ports": [{"protocol": "TCP", "port": 443}]}]


def test_no_network_policy_by_default(render: Any) -> None:
    assert not render({}).all("NetworkPolicy")


# -- migration hook ----------------------------------------------------------------------------------------------------
def test_migration_job_is_a_pre_install_pre_upgrade_hook(render: Any) -> None:
    rendered = render(VALUE_SETS["chart-secret"])
    job = rendered.get("Job", f"{FULLNAME}-migrate")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    c = container(job)
    assert c["args"] == ["migrate"]
    assert pod_spec(job)["restartPolicy"] == "Never"
    assert "envFrom" not in c, "at pre-install the release's ConfigMap does not exist yet"
    env = env_of(job)
    hook_secret = rendered.get("Secret", f"{FULLNAME}-migrate")
    assert int(hook_secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(annotations["helm.sh/hook-weight"])
    assert hook_secret["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert env["MIGRATION_DATABASE_URL"] == ("secret", f"{FULLNAME}-migrate", "MIGRATION_DATABASE_URL", True)
    assert env["DATABASE_URL"] == ("secret", f"{FULLNAME}-migrate", "DATABASE_URL", False)
    assert rendered.secret_data(f"{FULLNAME}-migrate") == {
        "DATABASE_URL": CHART_SECRET["databaseUrl"], "MIGRATION_DATABASE_URL": CHART_SECRET["migrationDatabaseUrl"]}
    assert env["LOG_LEVEL"] == "INFO" and env["DATABASE_POOL_SIZE"] == "5", "settings inline, same as the ConfigMap"
    assert "BROKER_URL" not in env


def test_migration_can_be_disabled(render: Any) -> None:
    rendered = render(VALUE_SETS["no-migration-hostnetwork"])
    assert not rendered.all("Job")
    assert [s["metadata"]["name"] for s in rendered.all("Secret")] == [FULLNAME]


# -- NOTES.txt --------------------------------------------------------------------------------------------------------
def _notes(helm_bin: Path, tmp_path: Path, values: dict[str, Any]) -> str:
    file = tmp_path / "values.yaml"
    file.write_text(json.dumps(values))
    done = run_helm(helm_bin, "install", RELEASE, str(CHART), "--dry-run=client", "--namespace", "tenants",
                    "-f", str(file))
    assert done.returncode == 0, done.stderr
    return done.stdout.split("NOTES:", 1)[1]


def test_notes_tell_how_to_reach_flower_and_check_workers(helm_bin: Path, tmp_path: Path) -> None:
    notes = _notes(helm_bin, tmp_path, VALUE_SETS["flower"])
    assert f"port-forward service/{FLOWER} 5555:5555" in notes
    assert f"rollout status deployment/{FULLNAME}-worker-default" in notes
    assert "entrypoint.sh healthcheck" in notes
    assert "WARNING" not in notes
    assert "then open http://127.0.0.1:5555/\n" in notes
    assert "/metrics" not in notes, "without an Ingress /metrics is not exposed"
    with_ingress = _notes(helm_bin, tmp_path, VALUE_SETS["flower-prefix-ingress"])
    # Flower answers 404 on the prefix without the trailing slash.
    assert "https://ops.example.com/flower/\n" in with_ingress
    assert "Flower serves /flower/metrics without authentication" in with_ingress
    assert "docs/helm.md" in with_ingress
    forwarded = _notes(helm_bin, tmp_path, {**VALUE_SETS["flower"], "flower": {"enabled": True, "urlPrefix": "ops"}})
    assert "then open http://127.0.0.1:5555/ops/\n" in forwarded
    missing = _notes(helm_bin, tmp_path, {})
    assert "WARNING: secret.brokerUrl" in missing and "Flower is disabled" in missing
    insecure = _notes(helm_bin, tmp_path, {"secret": CHART_SECRET, "redisTls": {"certReqs": "none"}})
    assert "not verified" in insecure


def test_chart_metadata() -> None:
    import yaml

    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "tenant-worker"
    assert chart["kubeVersion"] == ">=1.29.0-0"


def test_tenant_signing_key_reaches_the_workers_only(render: Any) -> None:
    """TENANT_SIGNING_KEY: in the chart-created Secret, an optional secretKeyRef of the workers, not of Flower."""
    import base64

    from chart_support import CHART_SECRET

    key = "k" * 40
    rendered = render({"secret": {**CHART_SECRET, "tenantSigningKey": key}, "flower": {"enabled": True}})
    [secret] = [s for s in rendered.all("Secret") if "TENANT_SIGNING_KEY" in (s.get("data") or {})]
    assert base64.b64decode(secret["data"]["TENANT_SIGNING_KEY"]).decode() == key
    for deployment in rendered.all("Deployment"):
        [container] = deployment["spec"]["template"]["spec"]["containers"][:1]
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container.get("env", []) if "valueFrom" in e
                and "secretKeyRef" in e["valueFrom"]}
        if "flower" in deployment["metadata"]["name"]:
            assert "TENANT_SIGNING_KEY" not in refs
        else:
            assert refs["TENANT_SIGNING_KEY"] == {"name": secret["metadata"]["name"], "key": "TENANT_SIGNING_KEY",
                                                  "optional": True}
        assert key not in str(deployment)


def test_execution_secrets_reach_the_workers_only(render: Any) -> None:
    """DB_ENCRYPTION_KEY and the judge API keys: in the chart-created Secret, optional secretKeyRefs of the workers;
    neither Flower nor the migration Job gets them, and no rendered workload holds a value."""
    import base64

    from chart_support import CHART_SECRET
    from cryptography.fernet import Fernet

    values = {"dbEncryptionKey": Fernet.generate_key().decode(), "geminiApiKey": "gemini-secret-value",
              "azureOpenaiApiKey": "azure-secret-value"}
    names = {"dbEncryptionKey": "DB_ENCRYPTION_KEY", "geminiApiKey": "GEMINI_API_KEY",
             "azureOpenaiApiKey": "AZURE_OPENAI_API_KEY"}
    rendered = render({"secret": {**CHART_SECRET, **values}, "flower": {"enabled": True}})
    [secret] = [s for s in rendered.all("Secret") if "DB_ENCRYPTION_KEY" in (s.get("data") or {})]
    for field, name in names.items():
        assert base64.b64decode(secret["data"][name]).decode() == values[field]
    for workload in (*rendered.all("Deployment"), *rendered.all("Job")):
        [container] = workload["spec"]["template"]["spec"]["containers"][:1]
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container.get("env", []) if "valueFrom" in e
                and "secretKeyRef" in e["valueFrom"]}
        worker = workload["kind"] == "Deployment" and "flower" not in workload["metadata"]["name"]
        for name in names.values():
            if worker:
                assert refs[name] == {"name": secret["metadata"]["name"], "key": name, "optional": True}
            else:
                assert name not in refs
        assert not any(value in str(workload) for value in values.values())
