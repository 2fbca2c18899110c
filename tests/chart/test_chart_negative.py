"""Renders that must fail, each with a message that names the value to change."""

from __future__ import annotations

from typing import Any

import pytest
from chart_support import CHART_SECRET

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
        ["workers[default]", "terminationGracePeriodSeconds (60) is shorter than softShutdownTimeout (120)"]),
    "grace-shorter-than-drain-plus-soft-shutdown": (
        {"workerDefaults": {"terminationGracePeriodSeconds": 100}},
        ["workers[default]", "terminationGracePeriodSeconds (100)", "at least 120"]),
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
    "secret-in-configmap": (
        {"config": {"extra": {"DATABASE_URL": "postgresql://u:p@h/db"}}},
        ["config.extra.DATABASE_URL", "Secret"]),
    "bad-memory-quantity": (
        {"workerDefaults": {"resources": {"limits": {"memory": "1.5Gi"}}}},
        ["cannot read the memory quantity \"1.5Gi\""]),
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
                         "terminationGracePeriodSeconds": 120}]})
    render({"flower": {"enabled": True}, "secret": {"existingSecret": "env"}})
    render({"flower": {"enabled": True}, "secret": {"flowerBasicAuth": "a:b"}})
    render({"keda": {"redis": {"address": "r:6379"}}, "secret": {"redisPassword": "pw"},
            "workers": [{"name": "a", "autoscaling": {"keda": {"enabled": True}}},
                        {"name": "b", "autoscaling": {"hpa": {"enabled": True}}}]})
