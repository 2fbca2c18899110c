"""Shared pieces of the chart tests: rendered-object lookups, helm runner, and the value sets."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "worker"
HERE = Path(__file__).resolve().parent
RELEASE = "rel"
NAMESPACE = "tenants"
FULLNAME = f"{RELEASE}-tenant-worker"


class RenderError(AssertionError):
    """helm refused to render; str() is helm's stderr."""


class Rendered:
    """The objects of one `helm template`, with lookups used by the tests."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.objects: list[dict[str, Any]] = [d for d in yaml.safe_load_all(text) if d]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [o for o in self.objects if o["kind"] == kind and o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}: {self.names()}"
        return found[0]

    def names(self) -> list[str]:
        return sorted(f"{o['kind']}/{o['metadata']['name']}" for o in self.objects)

    def worker(self, pool: str = "default") -> dict[str, Any]:
        return self.get("Deployment", f"{FULLNAME}-worker-{pool}")

    def workers(self) -> list[dict[str, Any]]:
        return [d for d in self.all("Deployment")
                if d["metadata"]["labels"].get("app.kubernetes.io/component") == "worker"]

    def secret_data(self, name: str = FULLNAME) -> dict[str, str]:
        data = self.get("Secret", name).get("data") or {}
        return {k: base64.b64decode(v).decode() for k, v in data.items()}


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


def container(obj: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    containers = pod_spec(obj)["containers"]
    if name is None:
        assert len(containers) == 1
        return containers[0]
    return next(c for c in containers if c["name"] == name)


def env_of(obj: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    """Container env as NAME -> value (plain) or NAME -> ("secret"|"configMap", object, key, optional)."""
    out: dict[str, Any] = {}
    for entry in container(obj, name).get("env") or []:
        assert entry["name"] not in out, f"duplicate env {entry['name']}"
        if "value" in entry:
            out[entry["name"]] = entry["value"]
        elif "valueFrom" in entry:
            ref = entry["valueFrom"].get("secretKeyRef")
            assert ref is not None, entry
            out[entry["name"]] = ("secret", ref["name"], ref["key"], ref.get("optional", False))
        else:
            out[entry["name"]] = ""
    return out


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=120, check=False)


# -- value sets shared by the matrix and the assertions ---------------------------------------------------------
CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUTest\n-----END CERTIFICATE-----\n"

API_TOKEN_SECRET = "3f6a1c0e9b8d7f2a4c5e6b1d0a9f8e7c"

CHART_SECRET = {
    "brokerUrl": "rediss://:redis-pw@redis.data:6380/0",
    "resultBackend": "rediss://:redis-pw@redis.data:6380/1",
    "databaseUrl": "postgresql://worker:db-pw@pg.data:5432/tenants",
    "migrationDatabaseUrl": "postgresql://owner:owner-pw@pg.data:5432/tenants",
    "flowerBasicAuth": "admin:flower-pw",
    "redisPassword": "redis-pw",
    "extra": {"OPENAI_API_KEY": "sk-test"},
}

VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "chart-secret": {"secret": CHART_SECRET},
    "pools": {"workers": [
        {"name": "default"},
        {"name": "heavy", "queues": ["execution"], "pool": "threads", "concurrency": 16, "softShutdownTimeout": 600,
         "preStopDrain": False, "resources": {"limits": {"cpu": "2", "memory": "4Gi"}},
         "nodeSelector": {"workload": "heavy"}, "tolerations": [{"key": "heavy", "operator": "Exists"}],
         "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                        "whenUnsatisfiable": "ScheduleAnyway",
                                        "labelSelector": {"matchLabels": {"tenant-worker/pool": "heavy"}}}]},
        {"name": "light", "queues": ["celery"], "pool": "gevent", "concurrency": 100, "replicas": 3,
         "podDisruptionBudget": {"minAvailable": 2}},
    ]},
    "flower": {"secret": CHART_SECRET, "flower": {"enabled": True}},
    "flower-prefix-ingress": {
        "secret": CHART_SECRET,
        "flower": {"enabled": True, "urlPrefix": "/flower/", "ingress": {
            "enabled": True, "className": "nginx", "hosts": ["ops.example.com"],
            "tls": [{"secretName": "ops-tls", "hosts": ["ops.example.com"]}]}},
    },
    "flower-oauth-existing": {
        "secret": {"existingSecret": "tenant-worker-env"},
        "flower": {"enabled": True, "auth": {"type": "oauth", "oauth": {
            "provider": "flower.views.auth.GithubLoginHandler", "allowedEmails": ".*@example\\.com",
            "redirectUri": "https://ops.example.com/login"}}},
    },
    "flower-unauthenticated": {"flower": {"enabled": True, "auth": {"type": "none", "allowUnauthenticated": True}}},
    "tls-ca-secret": {"redisTls": {"ca": {"existingSecret": "redis-ca", "key": "ca.pem"},
                                   "clientCert": {"existingSecret": "redis-client"}}},
    "tls-ca-configmap": {"redisTls": {"ca": {"existingConfigMap": "redis-ca-bundle"}}},
    "tls-ca-pem": {"secret": CHART_SECRET, "redisTls": {"ca": {"pem": CA_PEM}}},
    "existing-secret": {"secret": {"existingSecret": "tenant-worker-env",
                                   "extraKeys": ["OPENAI_API_KEY", "ANTHROPIC_API_KEY"]}},
    "hpa": {"workerDefaults": {"autoscaling": {"hpa": {"enabled": True, "maxReplicas": 8,
                                                       "targetMemoryUtilizationPercentage": 75}}}},
    "keda": {
        "secret": CHART_SECRET,
        "config": {"redisKeyPrefix": "prod:"},
        "keda": {"redis": {"address": "redis.data:6380", "tls": True, "databaseIndex": 0}},
        "redisTls": {"ca": {"pem": CA_PEM}, "clientCert": {"existingSecret": "redis-client"}},
        "workers": [{"name": "default", "autoscaling": {"keda": {"enabled": True, "minReplicaCount": 0}}},
                    {"name": "heavy", "queues": ["execution"], "autoscaling": {"hpa": {"enabled": True}}}],
    },
    "keda-plain": {
        "keda": {"redis": {"address": "redis:6379", "usePassword": False}},
        "workerDefaults": {"autoscaling": {"keda": {"enabled": True}}},
    },
    "network-policy": {
        "secret": CHART_SECRET,
        "flower": {"enabled": True},
        "networkPolicy": {
            "enabled": True,
            "redis": {"to": [{"podSelector": {"matchLabels": {"app": "redis"}}}]},
            "postgresql": {"to": [{"ipBlock": {"cidr": "10.0.0.0/16"}}]},
            "flowerFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress"}}}],
            "extraEgress": [{"ports": [{"protocol": "TCP", "port": 443}]}],
        },
    },
    "metrics": {
        "config": {"metricsPort": 9808},
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}}},
        "networkPolicy": {
            "enabled": True,
            "metricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
        },
    },
    "network-policy-oauth-ingress": {
        "secret": {"existingSecret": "tenant-worker-env"},
        "flower": {"enabled": True, "urlPrefix": "/flower",
                   "auth": {"type": "oauth", "oauth": {"provider": "flower.views.auth.GithubLoginHandler",
                                                       "allowedEmails": ".*@example\\.com"}},
                   "ingress": {"enabled": True, "className": "nginx", "hosts": ["ops.example.com"]}},
        "networkPolicy": {
            "enabled": True,
            "flowerFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}],
            "flowerOAuthEgress": {"to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}]},
        },
    },
    "no-migration-hostnetwork": {"migration": {"enabled": False}, "hostNetwork": True},
    "api": {"secret": {**CHART_SECRET, "apiTokenSecret": API_TOKEN_SECRET, "tenantSigningKey": "s" * 40},
            "api": {"enabled": True}},
    "api-existing-secret-own-auth": {
        "secret": {"existingSecret": "tenant-worker-env"},
        "redisTls": {"ca": {"existingSecret": "redis-ca"}},
        "api": {"enabled": True, "port": 9000, "replicas": 3, "authDependency": "backend.auth:current_user",
                "service": {"type": "LoadBalancer", "port": 443, "annotations": {"cloud/internal": "true"}},
                "env": [{"name": "HTTP_PROXY", "value": "http://proxy:3128"}], "podLabels": {"team": "qa"}},
        "networkPolicy": {"enabled": True, "apiFrom": [{"podSelector": {"matchLabels": {"app": "backend"}}}]},
    },
}


# The chart's table of its copies of config/options.py (generated by helm/worker/hack/generate_schema.py; a test
# fails while it is stale): config.* keys and the image variables they set, and the variables the chart fixes.
OPTIONS_TABLE: dict[str, Any] = json.loads((CHART / "files" / "options.json").read_text())
CONFIG_ENV: dict[str, str] = {key: entry["env"] for key, entry in OPTIONS_TABLE["config"].items()}
FIXED_ENV: dict[str, str] = OPTIONS_TABLE["fixed"]


def all_value_sets() -> Iterator[tuple[str, dict[str, Any]]]:
    yield from VALUE_SETS.items()
