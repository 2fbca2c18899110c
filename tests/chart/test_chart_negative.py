"""Renders that must fail, each with a message that names the value to change."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from chart_support import CHART, CHART_SECRET, NAMESPACE, RELEASE, run_helm

LONG_NAME = "a" * 55  # "<55>-worker-<pool>" is cut to 63 characters, so the pool name is lost

NEGATIVE = {
    "flower-without-auth": (
        {"flower": {"enabled": True}},
        ["flower.enabled needs authentication", "secret.flowerBasicAuth"]),
    "flower-auth-none-not-allowed": (
        {"flower": {"enabled": True, "auth": {"type": "none"}}},
        ["flower.auth.type=none", "allowUnauthenticated"]),
    "flower-oauth-incomplete": (
        {"secret": CHART_SECRET, "flower": {"enabled": True, "auth": {"type": "oauth", "oauth": {
            "provider": "flower.views.auth.GithubLoginHandler", "allowedEmails": ".*"}}}},
        ["secret.flowerOauth2Key"]),
    "flower-oauth-without-allowed-emails": (
        {"secret": {"existingSecret": "env"}, "flower": {"enabled": True, "auth": {"type": "oauth", "oauth": {
            "provider": "flower.views.auth.GithubLoginHandler"}}}},
        ["flower.auth.oauth.allowedEmails"]),
    "ingress-without-flower": (
        {"flower": {"ingress": {"enabled": True}}},
        ["flower.ingress.enabled needs flower.enabled"]),
    "grace-shorter-than-soft-shutdown": (
        {"workers": [{"name": "default", "preStopDrain": False, "softShutdownTimeout": 120,
                      "terminationGracePeriodSeconds": 60}]},
        ["workers[default]", "terminationGracePeriodSeconds (60) is shorter than the shutdown needs (135 s",
         "softShutdownTimeout=120 s plus 15 s for the worker to exit", "at least 135"]),
    "grace-without-exit-margin": (  # soft shutdown alone, no time for the process to exit
        {"workers": [{"name": "default", "preStopDrain": False, "softShutdownTimeout": 120,
                      "terminationGracePeriodSeconds": 134}]},
        ["workers[default]", "terminationGracePeriodSeconds (134)", "at least 135"]),
    "grace-shorter-than-drain-plus-soft-shutdown": (
        {"workerDefaults": {"terminationGracePeriodSeconds": 100}},
        ["workers[default]", "terminationGracePeriodSeconds (100)", "plus 15 s for the worker to exit",
         "at least 135"]),
    "grace-exactly-drain-plus-soft-shutdown": (  # 2 x soft leaves no time for the process to exit
        {"workerDefaults": {"terminationGracePeriodSeconds": 120}},
        ["workers[default]", "terminationGracePeriodSeconds (120) is shorter than the shutdown needs (135 s",
         "at least 135"]),
    "grace-margin-below-exit-time": (
        {"workerDefaults": {"terminationGraceMarginSeconds": 5}},
        ["/workerDefaults/terminationGraceMarginSeconds"]),
    "hostname-fixed": (  # every replica would share one node name: one pod's drain stops them all
        {"workers": [{"name": "default", "hostname": "worker@tenant"}]},
        ["/workers/0/hostname", "does not match pattern"]),
    "hostname-process-index-only": (  # %i is 0 in every replica's main process
        {"workerDefaults": {"hostname": "worker-%i@tenant"}},
        ["/workerDefaults/hostname", "does not match pattern"]),
    "hostname-escaped-percent": ({"workers": [{"name": "x", "hostname": "w@%%h"}]}, ["/workers/0/hostname"]),
    "deployment-names-collide-after-truncation": (
        {"fullnameOverride": LONG_NAME, "workers": [{"name": "heavy-a"}, {"name": "heavy-b"}]},
        ["workers[heavy-b]", f'its Deployment name "{LONG_NAME}-worker"', 'also the name of pool "heavy-a"',
         "Shorten the release name, fullnameOverride"]),
    "deployment-name-collides-with-flower": (
        {"fullnameOverride": "b" * 62, "secret": {"existingSecret": "env"}, "flower": {"enabled": True}},
        ["workers[default]", "also the name of Flower"]),
    "network-policy-flower-ingress-without-peers": (
        {"secret": {"existingSecret": "env"},
         "flower": {"enabled": True, "ingress": {"enabled": True, "hosts": ["ops.example.com"]}},
         "networkPolicy": {"enabled": True}},
        ["networkPolicy.flowerFrom is empty", "ingress controller cannot reach Flower",
         "Set networkPolicy.flowerFrom"]),
    "hpa-and-keda": (
        {"keda": {"redis": {"address": "redis:6379", "usePassword": False}},
         "workers": [{"name": "both", "autoscaling": {"hpa": {"enabled": True}, "keda": {"enabled": True}}}]},
        ["workers[both]", "autoscaling.hpa and autoscaling.keda are both enabled"]),
    "keda-without-address": (
        {"keda": {"redis": {"usePassword": False}}, "workerDefaults": {"autoscaling": {"keda": {"enabled": True}}}},
        ["keda.redis.address"]),
    "keda-password-missing": (
        {"keda": {"redis": {"address": "redis:6379"}}, "workerDefaults": {"autoscaling": {"keda": {"enabled": True}}}},
        ["secret.redisPassword is empty", "keda.redis.usePassword=false"]),
    "hpa-min-above-max": (
        {"workerDefaults": {"autoscaling": {"hpa": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}}},
        ["minReplicas is above maxReplicas"]),
    "duplicate-pool": (
        {"workers": [{"name": "a"}, {"name": "a"}]},
        ['"a" is used twice']),
    "two-ca-sources": (
        {"redisTls": {"ca": {"existingSecret": "x", "pem": "y"}}},
        ["redisTls.ca: set only one of"]),
    "existing-secret-with-values": (
        {"secret": {"existingSecret": "env", "brokerUrl": "redis://r:6379/0"}},
        ["secret.existingSecret is set together with secret values"]),
    "existing-secret-with-signing-key": (
        {"secret": {"existingSecret": "env", "tenantSigningKey": "k" * 32}},
        ["secret.existingSecret is set together with secret values"]),
    "short-signing-key": (
        {"secret": {"tenantSigningKey": "k" * 31}},
        ["tenantSigningKey"]),
    "secret-in-configmap": (
        {"config": {"extra": {"DATABASE_URL": "postgresql://u:p@h/db"}}},
        ["config.extra.DATABASE_URL", "Secret"]),
    # the image's own cross-field rules (config/loader.py _check_together), all reported at once
    "soft-limit-not-below-hard": (  # the issue: every pod and the migration hook would crash-loop
        {"config": {"taskSoftTimeLimit": 4000}},
        ["VALUES VALIDATION", "config.taskSoftTimeLimit (4000) must be below config.taskTimeLimit (3600)"]),
    "visibility-timeout-below-retry-backoff": (
        {"config": {"taskRetryBackoffMax": 9000}},
        ["config.brokerVisibilityTimeout (7200) must be above config.taskTimeLimit + max(config.taskMaxCountdown, "
         "config.taskRetryBackoffMax) (3600 + 9000 = 12600)", "at least 12601"]),
    "visibility-timeout-equal-to-limit-plus-countdown": (
        {"config": {"brokerVisibilityTimeout": 4200}},
        ["config.brokerVisibilityTimeout (4200)", "(3600 + 600 = 4200)"]),
    "heartbeat-max-age-not-above-interval": (
        {"config": {"workerHeartbeatInterval": 10, "workerHeartbeatMaxAge": 10}},
        ["config.workerHeartbeatMaxAge (10) must be above config.workerHeartbeatInterval (10)"]),
    "every-broken-rule-at-once": (
        {"config": {"taskSoftTimeLimit": 4000, "workerHeartbeatInterval": 10, "workerHeartbeatMaxAge": 5,
                    "taskMaxCountdown": 9000}},
        ["config.taskSoftTimeLimit (4000)", "config.brokerVisibilityTimeout (7200)",
         "config.workerHeartbeatMaxAge (5)"]),
    "config-extra-shadows-an-option": (
        {"config": {"extra": {"TASK_SOFT_TIME_LIMIT": "4000", "SOME_NEW_OPTION": "1"}}},
        ["config.extra.TASK_SOFT_TIME_LIMIT: the image reads these variables"]),
    "secret-extra-key-shadows-an-option": (
        {"secret": {"existingSecret": "env", "extraKeys": ["OPENAI_API_KEY", "DATABASE_URL_FILE"]}},
        ["secret.extraKeys.DATABASE_URL_FILE: the image reads"]),
    "extra-args-unbalanced-quote": (
        {"workers": [{"name": "default", "extraArgs": "--exclude-queues 'a"}]},
        ["workers[default]: extraArgs \"--exclude-queues 'a\" cannot be split like a shell line"]),
    "hostname-two-ats": ({"workers": [{"name": "default", "hostname": "w@x@%h"}]}, ["/workers/0/hostname"]),
    # values.schema.json
    "unknown-top-level-key": ({"replicaCount": 3}, ["additional properties 'replicaCount' not allowed"]),
    "unknown-pool-key": (
        {"workers": [{"name": "default", "concurency": 4}]},
        ["/workers/0", "additional properties 'concurency' not allowed"]),
    "unknown-nested-key": (
        {"flower": {"auth": {"basic": True}}},
        ["/flower/auth", "additional properties 'basic' not allowed"]),
    "unknown-defaults-key": (
        {"workerDefaults": {"name": "x"}},
        ["/workerDefaults", "additional properties 'name' not allowed"]),
    "pool-without-name": ({"workers": [{"queues": ["celery"]}]}, ["/workers/0", "missing property 'name'"]),
    "bad-pool-type": ({"workers": [{"name": "x", "pool": "eventlet"}]}, ["/workers/0/pool"]),
    "empty-queues": ({"workers": [{"name": "x", "queues": []}]}, ["/workers/0/queues"]),
    "bad-queue-name": ({"workers": [{"name": "x", "queues": ["a queue"]}]}, ["/workers/0/queues/0"]),
    # the image takes only "auto" or an integer; "half" or "1Gi" never reach it
    "bad-max-memory-per-child": (
        {"workers": [{"name": "x", "maxMemoryPerChild": "half"}]}, ["/workers/0/maxMemoryPerChild"]),
    "max-memory-per-child-quantity": (
        {"workerDefaults": {"maxMemoryPerChild": "1Gi"}}, ["/workerDefaults/maxMemoryPerChild"]),
    "bad-cert-reqs": ({"redisTls": {"certReqs": "CERT_NONE"}}, ["/redisTls/certReqs"]),
    "no-workers": ({"workers": []}, ["/workers"]),
    "removed-default": ({"workerDefaults": {"livenessProbe": None}}, ["/workerDefaults", "livenessProbe"]),
}


@pytest.mark.parametrize("case", sorted(NEGATIVE))
def test_render_fails_with_message(render_error: Any, case: str) -> None:
    values, fragments = NEGATIVE[case]
    message = render_error(values)
    for fragment in fragments:
        assert fragment in message, f"{case}: {fragment!r} not in helm's error:\n{message}"


def test_near_misses_render(render: Any) -> None:
    """The boundaries of the rules above are where they should be."""
    render({"workers": [{"name": "default", "preStopDrain": False, "softShutdownTimeout": 120,
                         "terminationGracePeriodSeconds": 135}]})
    render({"workerDefaults": {"terminationGracePeriodSeconds": 135, "terminationGraceMarginSeconds": 15}})
    render({"workers": [{"name": "default", "hostname": "worker@%h"}]})
    render({"fullnameOverride": "a" * 40, "workers": [{"name": "heavy-a"}, {"name": "heavy-b"}]})
    render({"secret": {"existingSecret": "env"}, "flower": {"enabled": True, "ingress": {"enabled": True}},
            "networkPolicy": {"enabled": True, "flowerFrom": [{"podSelector": {}}]}})
    render({"secret": {"existingSecret": "env"}, "flower": {"enabled": True}, "networkPolicy": {"enabled": True}})
    render({"flower": {"enabled": True}, "secret": {"existingSecret": "env"}})
    render({"flower": {"enabled": True}, "secret": {"flowerBasicAuth": "a:b"}})
    render({"keda": {"redis": {"address": "r:6379"}}, "secret": {"redisPassword": "pw"},
            "workers": [{"name": "a", "autoscaling": {"keda": {"enabled": True}}},
                        {"name": "b", "autoscaling": {"hpa": {"enabled": True}}}]})
    render({"config": {"taskSoftTimeLimit": 3599, "brokerVisibilityTimeout": 4201, "workerHeartbeatMaxAge": 11}})
    render({"config": {"taskRetryBackoffMax": 9000, "brokerVisibilityTimeout": 12601}})
    render({"workers": [{"name": "default", "extraArgs": "--exclude-queues 'a b' \"it's\" a\\ b"}]})


def test_fixed_hostname_fails_also_without_the_schema(helm_bin: Path, tmp_path: Path) -> None:
    """The template repeats the schema's hostname rule, for `--skip-schema-validation`."""
    values = tmp_path / "values.json"
    values.write_text(json.dumps({"workers": [{"name": "default", "hostname": "worker@tenant"}]}))
    done = run_helm(helm_bin, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "-f", str(values),
                    "--skip-schema-validation")
    assert done.returncode != 0, "render succeeded with a fixed hostname"
    assert 'workers[default]: hostname "worker@tenant" has no %h or %n' in done.stderr
    assert "preStop drain" in done.stderr and '"worker@%h"' in done.stderr


@pytest.mark.parametrize(("pool", "message"), [
    ({"hostname": "w@x@%h"}, 'workers[default]: hostname "w@x@%h" is not a node name the image accepts'),
    ({"hostname": "@%h"}, 'workers[default]: hostname "@%h" is not a node name the image accepts'),
])
def test_image_hostname_rule_holds_also_without_the_schema(helm_bin: Path, tmp_path: Path, pool: dict[str, Any],
                                                           message: str) -> None:
    values = tmp_path / "values.json"
    values.write_text(json.dumps({"workers": [{"name": "default", **pool}]}))
    done = run_helm(helm_bin, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "-f", str(values),
                    "--skip-schema-validation")
    assert done.returncode != 0 and message in done.stderr, done.stderr
