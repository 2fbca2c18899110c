"""Worker Deployments: values reach the container, the shutdown contract, probes, security, selectors."""

from __future__ import annotations

from typing import Any

import pytest
from chart_support import FULLNAME, VALUE_SETS, container, env_of, pod_spec

from config.options import BY_NAME

HEALTHCHECK = ["/usr/local/bin/entrypoint.sh", "healthcheck"]
HEALTH_DIR = BY_NAME["WORKER_HEALTH_DIR"].default  # the image's default, on the pods' /tmp emptyDir
SECRET_ENV = {
    "BROKER_URL": ("secret", FULLNAME, "BROKER_URL", False),
    "CELERY_RESULT_BACKEND": ("secret", FULLNAME, "CELERY_RESULT_BACKEND", False),
    "DATABASE_URL": ("secret", FULLNAME, "DATABASE_URL", False),
}


def _labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_default_renders_one_pool_consuming_celery_and_execution(render: Any) -> None:
    rendered = render({})
    workers = rendered.workers()
    assert [w["metadata"]["name"] for w in workers] == [f"{FULLNAME}-worker-default"]
    worker = workers[0]
    c = container(worker)
    assert c["args"] == ["worker"]
    assert "command" not in c, "the image's ENTRYPOINT (tini + entrypoint.sh) must stay in charge"
    assert c["image"] == "tenant-worker:0.1.0"
    env = env_of(worker)
    assert env["CELERY_WORKER_QUEUES"] == "celery,execution"
    assert env["CELERY_WORKER_POOL"] == "prefork"
    assert env["CELERY_WORKER_HOSTNAME"] == "default@%h"
    assert env["CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT"] == "60"
    assert env["CELERY_WORKER_MINGLE"] == "no", "pods start without Celery's 1 s mingle wait"
    for name, ref in SECRET_ENV.items():
        assert env[name] == ref
    assert c["envFrom"] == [{"configMapRef": {"name": FULLNAME}}]
    rendered.get("ConfigMap", FULLNAME)
    assert rendered.get("ConfigMap", FULLNAME)["data"]["ENABLE_FLOWER"] == "no"
    assert worker["spec"]["replicas"] == 1
    assert not rendered.all("Service"), "workers serve nothing"
    assert not [o for o in rendered.objects if "flower" in o["metadata"]["name"]]


def test_every_pool_value_reaches_the_container(render: Any) -> None:
    values = {"workers": [{
        "name": "tuned", "queues": ["execution", "priority.high"], "pool": "threads", "concurrency": 12,
        "prefetchMultiplier": 3, "maxTasksPerChild": 0, "maxMemoryPerChild": 250000, "loglevel": "DEBUG",
        "hostname": "tuned-%h", "softShutdownTimeout": 45, "extraArgs": "--without-gossip", "mingle": True,
        "env": [{"name": "EXTRA_FLAG", "value": "1"}],
    }]}
    env = env_of(render(values).worker("tuned"))
    assert {k: v for k, v in env.items() if k.startswith("CELERY_WORKER_")} == {
        "CELERY_WORKER_QUEUES": "execution,priority.high",
        "CELERY_WORKER_POOL": "threads",
        "CELERY_WORKER_CONCURRENCY": "12",
        "CELERY_WORKER_PREFETCH_MULTIPLIER": "3",
        "CELERY_WORKER_MAX_TASKS_PER_CHILD": "0",
        "CELERY_WORKER_MAX_MEMORY_PER_CHILD": "250000",
        "CELERY_WORKER_LOGLEVEL": "DEBUG",
        "CELERY_WORKER_HOSTNAME": "tuned-%h",
        "CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT": "45",
        "CELERY_WORKER_MINGLE": "yes",
        "CELERY_WORKER_OPTS": "--without-gossip",
    }
    assert env["EXTRA_FLAG"] == "1"


def test_every_config_value_reaches_the_configmap(render: Any) -> None:
    config = {
        "logLevel": "WARNING", "databasePoolSize": 11, "databaseMaxOverflow": 12, "databasePoolTimeout": 13,
        "redisSocketTimeout": 14, "redisSocketConnectTimeout": 15, "redisRetryOnTimeout": False,
        "redisSocketKeepalive": False, "redisHealthCheckInterval": 16, "redisMaxConnections": 17,
        "redisKeyPrefix": "t1:", "brokerVisibilityTimeout": 604800, "taskTimeLimit": 1800,
        "taskSoftTimeLimit": 1700, "taskMaxCountdown": 900, "taskMaxRetries": 7, "taskRetryBackoffMax": 120,
        "taskAcksLate": True, "resultExpires": 7200, "workerHeartbeatInterval": 5, "workerHeartbeatMaxAge": 40,
        "workerBrokerLostExitAfter": 86400, "executionAllowPrivateTargets": True, "executionRunConcurrency": 21,
        "executionLaneConcurrency": 22, "executionLeaseSeconds": 23, "executionLaneSeconds": 24,
        "executionMaxAttempts": 5, "executionRetryAfterCap": 25, "executionMaxResponseBytes": 2048,
        "executionMaxOutputChars": 512, "executionSweepInterval": 0, "executionStallSeconds": 300,
        "geminiModelName": "gemini-x", "geminiBaseUrl": "http://gemini.test", "azureOpenaiEndpoint":
        "https://azure.test", "azureOpenaiDeploymentName": "dep-1", "azureOpenaiApiVersion": "2025-01-01",
        "judgeTimeoutSeconds": 26, "judgeAllowedModels": "gemini-2.5-pro,gpt-x", "logFormat": "json",
        "metricsPort": 9808, "metricsOrganizations": "org-a,org-b", "extra": {"SOME_NEW_OPTION": "on"},
    }
    data = render({"config": config}).get("ConfigMap", FULLNAME)["data"]
    assert data == {
        "LOG_LEVEL": "WARNING", "LOG_FORMAT": "json", "METRICS_PORT": "9808", "METRICS_ORGANIZATIONS": "org-a,org-b",
        "DATABASE_POOL_SIZE": "11", "DATABASE_MAX_OVERFLOW": "12",
        "DATABASE_POOL_TIMEOUT": "13", "REDIS_SOCKET_TIMEOUT": "14", "REDIS_SOCKET_CONNECT_TIMEOUT": "15",
        "REDIS_RETRY_ON_TIMEOUT": "no", "REDIS_SOCKET_KEEPALIVE": "no", "REDIS_HEALTH_CHECK_INTERVAL": "16",
        "REDIS_MAX_CONNECTIONS": "17", "REDIS_KEY_PREFIX": "t1:", "BROKER_VISIBILITY_TIMEOUT": "604800",
        "TASK_TIME_LIMIT": "1800", "TASK_SOFT_TIME_LIMIT": "1700", "TASK_MAX_COUNTDOWN": "900",
        "TASK_MAX_RETRIES": "7", "TASK_RETRY_BACKOFF_MAX": "120", "TASK_ACKS_LATE": "yes", "RESULT_EXPIRES": "7200",
        "WORKER_HEARTBEAT_INTERVAL": "5", "WORKER_HEARTBEAT_MAX_AGE": "40",
        "WORKER_BROKER_LOST_EXIT_AFTER": "86400", "WORKER_HEALTH_DIR": HEALTH_DIR,
        "ENABLE_FLOWER": "no", "REDIS_SSL_CERT_REQS": "required", "SOME_NEW_OPTION": "on",
        "EXECUTION_ALLOW_PRIVATE_TARGETS": "yes", "EXECUTION_RUN_CONCURRENCY": "21",
        "EXECUTION_LANE_CONCURRENCY": "22", "EXECUTION_LEASE_SECONDS": "23", "EXECUTION_LANE_SECONDS": "24",
        "EXECUTION_MAX_ATTEMPTS": "5", "EXECUTION_RETRY_AFTER_CAP": "25", "EXECUTION_MAX_RESPONSE_BYTES": "2048",
        "EXECUTION_MAX_OUTPUT_CHARS": "512", "EXECUTION_SWEEP_INTERVAL": "0", "EXECUTION_STALL_SECONDS": "300",
        "GEMINI_MODEL_NAME": "gemini-x", "GEMINI_BASE_URL": "http://gemini.test",
        "AZURE_OPENAI_ENDPOINT": "https://azure.test", "AZURE_OPENAI_DEPLOYMENT_NAME": "dep-1",
        "AZURE_OPENAI_API_VERSION": "2025-01-01", "JUDGE_TIMEOUT_SECONDS": "26",
        "JUDGE_ALLOWED_MODELS": "gemini-2.5-pro,gpt-x",
    }


def test_pools_inherit_defaults_and_override_them(render: Any) -> None:
    rendered = render(VALUE_SETS["pools"])
    assert sorted(w["metadata"]["name"] for w in rendered.workers()) == [
        f"{FULLNAME}-worker-default", f"{FULLNAME}-worker-heavy", f"{FULLNAME}-worker-light"]
    default, heavy, light = rendered.worker("default"), rendered.worker("heavy"), rendered.worker("light")
    assert env_of(heavy)["CELERY_WORKER_QUEUES"] == "execution"
    assert env_of(heavy)["CELERY_WORKER_POOL"] == "threads"
    assert env_of(heavy)["CELERY_WORKER_CONCURRENCY"] == "16"
    assert env_of(light)["CELERY_WORKER_QUEUES"] == "celery"
    assert env_of(light)["CELERY_WORKER_POOL"] == "gevent"
    assert light["spec"]["replicas"] == 3
    # maps merge: heavy keeps the default requests and adds/overrides limits
    assert container(heavy)["resources"] == {"requests": {"cpu": "250m", "memory": "512Mi"},
                                             "limits": {"cpu": "2", "memory": "4Gi"}}
    assert container(light)["resources"] == container(default)["resources"]
    # false overrides a true default (Sprig's mergeOverwrite would silently keep true)
    assert "lifecycle" not in container(heavy)
    assert container(default)["lifecycle"]["preStop"]["exec"]["command"] == ["/usr/local/bin/entrypoint.sh", "drain"]
    assert pod_spec(heavy)["nodeSelector"] == {"workload": "heavy"}
    assert pod_spec(heavy)["tolerations"] == [{"key": "heavy", "operator": "Exists"}]
    assert "nodeSelector" not in pod_spec(default) and "tolerations" not in pod_spec(default)
    assert pod_spec(heavy)["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
    # each pool gets its own PDB; light's minAvailable wins over the default maxUnavailable
    pdb = rendered.get("PodDisruptionBudget", f"{FULLNAME}-worker-light")["spec"]
    assert pdb["minAvailable"] == 2 and "maxUnavailable" not in pdb
    assert rendered.get("PodDisruptionBudget", f"{FULLNAME}-worker-default")["spec"]["maxUnavailable"] == 1


def test_null_removes_an_inherited_map_entry(render: Any) -> None:
    values = {"workerDefaults": {"nodeSelector": {"zone": "a", "disk": "ssd"}},
              "workers": [{"name": "default", "nodeSelector": {"disk": None},
                           "resources": {"limits": {"memory": None}}}]}
    worker = render(values).worker()
    assert pod_spec(worker)["nodeSelector"] == {"zone": "a"}
    assert container(worker)["resources"] == {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {}}
    # Without a limit "auto" still reaches the image, which finds no cgroup limit and uses 0 (tests/container).
    assert env_of(worker)["CELERY_WORKER_MAX_MEMORY_PER_CHILD"] == "auto"


MAX_MEMORY_MAXIMUM = BY_NAME["CELERY_WORKER_MAX_MEMORY_PER_CHILD"].parser.maximum


# "auto" is computed by the image at launch from the cgroup limit (tests/container/test_launcher.py); the chart
# passes it through whatever the limit, the concurrency or the pool, and passes numbers through as numbers.
@pytest.mark.parametrize(("pool", "overrides", "expected"), [
    ("prefork", {}, "auto"),  # the default, with the default 1Gi limit
    ("prefork", {"concurrency": 4, "resources": {"limits": {"memory": "3Gi"}}}, "auto"),
    ("prefork", {"resources": {"limits": {"memory": "1.5Gi"}}}, "auto"),  # a quantity the old Sprig parser refused
    ("prefork", {"concurrency": 1, "resources": {"limits": {"memory": "2Ti"}}}, "auto"),  # above the maximum
    ("threads", {}, "auto"),  # the image ignores it for other pools
    ("prefork", {"maxMemoryPerChild": 0}, "0"),
    ("prefork", {"maxMemoryPerChild": 123456}, "123456"),
    ("prefork", {"maxMemoryPerChild": MAX_MEMORY_MAXIMUM}, str(MAX_MEMORY_MAXIMUM)),  # no 1.073741824e+09
    ("threads", {"maxMemoryPerChild": 250000}, "250000"),
])
def test_max_memory_per_child(render: Any, pool: str, overrides: dict[str, Any], expected: str) -> None:
    worker = render({"workers": [{"name": "default", "pool": pool, **overrides}]}).worker()
    assert env_of(worker)["CELERY_WORKER_MAX_MEMORY_PER_CHILD"] == expected


# -- shutdown contract -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("overrides", "grace"), [
    ({}, 60 * 2 + 30),  # drain may wait the soft shutdown, then the soft shutdown itself, then the margin
    ({"preStopDrain": False}, 60 + 30),
    ({"softShutdownTimeout": 600}, 1230),
    ({"softShutdownTimeout": 600, "terminationGraceMarginSeconds": 15, "preStopDrain": False}, 615),
    ({"terminationGracePeriodSeconds": 135}, 135),  # exactly drain + soft shutdown + 15 s to exit
    ({"terminationGracePeriodSeconds": 75, "preStopDrain": False}, 75),  # exactly soft shutdown + 15 s to exit
    ({"terminationGracePeriodSeconds": 3600}, 3600),
])
def test_grace_period(render: Any, overrides: dict[str, Any], grace: int) -> None:
    worker = render({"workers": [{"name": "default", **overrides}]}).worker()
    assert pod_spec(worker)["terminationGracePeriodSeconds"] == grace
    soft = int(env_of(worker)["CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT"])
    drains = "lifecycle" in container(worker)
    assert grace >= soft * (2 if drains else 1) + 15, "docs/container.md: >= 2 x soft + 15 with the drain"


def test_rolling_update_never_drops_below_wanted_and_pods_are_not_evicted(render: Any) -> None:
    worker = render({}).worker()
    assert worker["spec"]["strategy"] == {"type": "RollingUpdate",
                                          "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    annotations = worker["spec"]["template"]["metadata"]["annotations"]
    assert annotations["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
    allowed = render({"workerDefaults": {"safeToEvict": True}}).worker()
    assert allowed["spec"]["template"]["metadata"]["annotations"][
        "cluster-autoscaler.kubernetes.io/safe-to-evict"] == "true"


def test_pdb_selects_exactly_its_pool(render: Any) -> None:
    rendered = render(VALUE_SETS["pools"])
    for pdb in rendered.all("PodDisruptionBudget"):
        selector = pdb["spec"]["selector"]["matchLabels"]
        matched = [w["metadata"]["name"] for w in rendered.workers()
                   if _labels_match(selector, w["spec"]["template"]["metadata"]["labels"])]
        assert matched == [pdb["metadata"]["name"]]
        assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_deployment_selectors_match_their_pods_only(render: Any) -> None:
    for values in (VALUE_SETS["pools"], VALUE_SETS["network-policy"]):
        rendered = render(values)
        pods = {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
                for d in rendered.all("Deployment")}
        for deployment in rendered.all("Deployment"):
            selector = deployment["spec"]["selector"]["matchLabels"]
            assert [n for n, labels in pods.items() if _labels_match(selector, labels)] == \
                [deployment["metadata"]["name"]]


def test_checksums_roll_pods_on_config_and_secret_changes(render: Any) -> None:
    def sums(values: dict[str, Any]) -> dict[str, str]:
        annotations = render(values).worker()["spec"]["template"]["metadata"]["annotations"]
        return {k: v for k, v in annotations.items() if k.startswith("checksum/")}

    base = sums({"secret": VALUE_SETS["chart-secret"]["secret"]})
    assert set(base) == {"checksum/config", "checksum/secret"}
    config_changed = sums({"secret": VALUE_SETS["chart-secret"]["secret"], "config": {"logLevel": "DEBUG"}})
    assert config_changed["checksum/config"] != base["checksum/config"]
    assert config_changed["checksum/secret"] == base["checksum/secret"]
    secret = dict(VALUE_SETS["chart-secret"]["secret"], brokerUrl="rediss://:other@redis.data:6380/0")
    secret_changed = sums({"secret": secret})
    assert secret_changed["checksum/secret"] != base["checksum/secret"]
    assert secret_changed["checksum/config"] == base["checksum/config"]
    ca_changed = sums({"secret": VALUE_SETS["chart-secret"]["secret"], "redisTls": {"ca": {"pem": "other"}}})
    assert ca_changed["checksum/config"] != base["checksum/config"], "a new CA bundle must roll the pods"


# -- probes --------------------------------------------------------------------------------------------------------
def test_default_probes_use_the_heartbeat_healthcheck(render: Any) -> None:
    c = container(render({}).worker())
    assert c["startupProbe"]["exec"]["command"] == HEALTHCHECK
    assert c["livenessProbe"]["exec"]["command"] == HEALTHCHECK
    assert "readinessProbe" not in c
    # tolerant: a worker gets minutes to start and several missed beats before a restart
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 300
    assert c["livenessProbe"]["periodSeconds"] * c["livenessProbe"]["failureThreshold"] >= 120
    assert c["livenessProbe"]["timeoutSeconds"] >= 5
    for probe in ("startupProbe", "livenessProbe"):
        assert "enabled" not in c[probe]


def test_probes_are_overridable(render: Any) -> None:
    values = {"workers": [{
        "name": "default",
        "livenessProbe": {"failureThreshold": 10, "exec": {"command": ["/bin/true"]}},
        "startupProbe": {"enabled": False},
        "readinessProbe": {"enabled": True, "periodSeconds": 15},
    }]}
    c = container(render(values).worker())
    assert c["livenessProbe"]["exec"]["command"] == ["/bin/true"]
    assert c["livenessProbe"]["failureThreshold"] == 10
    assert c["livenessProbe"]["periodSeconds"] == 30, "untouched settings are inherited"
    assert "startupProbe" not in c
    assert c["readinessProbe"] == {"exec": {"command": [*HEALTHCHECK, "--ready"]}, "periodSeconds": 15,
                                   "timeoutSeconds": 10, "failureThreshold": 3}
    http = render({"workers": [{"name": "default", "livenessProbe": {
        "httpGet": {"path": "/healthz", "port": 8080}}}]})
    probe = container(http.worker())["livenessProbe"]
    assert "exec" not in probe and probe["httpGet"] == {"path": "/healthz", "port": 8080}


# -- security -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("values_set", ["default", "flower", "tls-ca-secret", "keda", "no-migration-hostnetwork"])
def test_every_pod_is_locked_down(render: Any, values_set: str) -> None:
    rendered = render(VALUE_SETS[values_set])
    pods = rendered.all("Deployment") + rendered.all("Job")
    assert pods
    for obj in pods:
        spec = pod_spec(obj)
        assert spec["automountServiceAccountToken"] is False
        assert spec["enableServiceLinks"] is False, "service links would inject e.g. FLOWER_PORT=tcp://..."
        assert spec["securityContext"] == {
            "runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
            "fsGroupChangePolicy": "OnRootMismatch", "seccompProfile": {"type": "RuntimeDefault"}}
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["privileged"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
            mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
            assert "/tmp" in mounts, "read-only root needs a writable /tmp"
            tmp = next(v for v in spec["volumes"] if v["name"] == mounts["/tmp"]["name"])
            assert "emptyDir" in tmp
            for path, mount in mounts.items():
                if path != "/tmp":
                    assert mount.get("readOnly") is True, path
            assert "resources" in c and c["resources"]["limits"]["memory"]
        assert spec.get("hostNetwork", False) is (values_set == "no-migration-hostnetwork")
    for sa in rendered.all("ServiceAccount"):
        assert sa["automountServiceAccountToken"] is False
    for obj in rendered.all("Deployment"):
        assert pod_spec(obj)["serviceAccountName"] == f"{FULLNAME}"


def test_service_account_can_be_external(render: Any) -> None:
    rendered = render({"serviceAccount": {"create": False, "name": "shared"}})
    assert not rendered.all("ServiceAccount")
    assert pod_spec(rendered.worker())["serviceAccountName"] == "shared"
    # An existing ServiceAccount exists before the pre-install hook too, so the migration uses it.
    assert pod_spec(rendered.get("Job", f"{FULLNAME}-migrate"))["serviceAccountName"] == "shared"


@pytest.mark.parametrize("service_account", [{}, {"create": True, "name": "custom"}, {"create": False}])
def test_migration_hook_does_not_use_a_service_account_created_by_the_release(
        render: Any, service_account: dict[str, Any]) -> None:
    """A chart-created ServiceAccount does not exist yet when pre-install hooks run: the API server would refuse
    the migration pod. The hook runs under the namespace's default ServiceAccount (token still not mounted)."""
    rendered = render({"serviceAccount": service_account})
    job = rendered.get("Job", f"{FULLNAME}-migrate")
    assert "serviceAccountName" not in pod_spec(job)
    assert "serviceAccount" not in pod_spec(job)
    assert pod_spec(job)["automountServiceAccountToken"] is False
    for sa in rendered.all("ServiceAccount"):
        assert "helm.sh/hook" not in (sa["metadata"].get("annotations") or {}), "the workers' SA is no hook"
    assert pod_spec(rendered.worker())["serviceAccountName"] == (
        service_account.get("name") or (FULLNAME if service_account.get("create", True) else "default"))


@pytest.mark.parametrize("hostname", ["tuned@%h", "%n-worker", "w-%i@%h", "%%x-%h", "a@%h.%d"])
def test_hostname_with_the_pod_name_is_accepted(render: Any, hostname: str) -> None:
    worker = render({"workers": [{"name": "default", "hostname": hostname}]}).worker()
    assert env_of(worker)["CELERY_WORKER_HOSTNAME"] == hostname


def test_image_digest_and_pull_secrets(render: Any) -> None:
    digest = "sha256:" + "a" * 64
    rendered = render({"image": {"repository": "registry.example/tw", "tag": "1.2.3", "digest": digest},
                       "imagePullSecrets": [{"name": "regcred"}]})
    for obj in rendered.all("Deployment") + rendered.all("Job"):
        assert container(obj)["image"] == f"registry.example/tw@{digest}"
        assert pod_spec(obj)["imagePullSecrets"] == [{"name": "regcred"}]
