"""Every object of every value set is valid for Kubernetes 1.29 and 1.35 (strict: unknown fields fail), KEDA
objects against KEDA's CRD schema; rendering is deterministic."""

from __future__ import annotations

import functools
import json
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
from chart_support import HERE, VALUE_SETS
from kubernetes_validate.utils import SchemaNotFoundError

KUBERNETES_VERSIONS = ["1.29.0", "1.35.0"]
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda-scaledobject.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda-triggerauthentication.json",
    # Hand-written (no registry reachable here): the ServiceMonitor fields the chart renders, from the Prometheus
    # Operator API reference; it rejects unknown fields, so a typo in the template fails.
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-subset.json",
}


@functools.cache
def _crd_validator(file: str) -> jsonschema.protocols.Validator:
    schema = json.loads((HERE / "schemas" / file).read_text())
    validator_cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    validator_cls.check_schema(schema)
    return validator_cls(schema)


def _validate(obj: dict[str, Any], version: str) -> None:
    crd = CRD_SCHEMAS.get((obj["apiVersion"], obj["kind"]))
    if crd:
        _crd_validator(crd).validate(obj)
        return
    kubernetes_validate.validate(obj, version, strict=True)


def test_bundled_schemas_cover_the_versions() -> None:
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}, version,
                                     strict=True)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("values_set", sorted(VALUE_SETS))
def test_rendered_objects_are_valid(render: Any, values_set: str, version: str) -> None:
    rendered = render(VALUE_SETS[values_set])
    assert rendered.objects, "nothing rendered"
    seen = set()
    for obj in rendered.objects:
        key = (obj["apiVersion"], obj["kind"], obj["metadata"]["name"])
        assert key not in seen, f"rendered twice: {key}"
        seen.add(key)
        assert "namespace" not in obj["metadata"] or obj["metadata"]["namespace"] == "tenants"
        try:
            _validate(obj, version)
        except SchemaNotFoundError:
            pytest.fail(f"no schema for {obj['apiVersion']} {obj['kind']}: add it to CRD_SCHEMAS")
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as exc:
            pytest.fail(f"{values_set}: {obj['kind']}/{obj['metadata']['name']} invalid for {version}: {exc}")


def test_validation_catches_mistakes(render: Any) -> None:
    """The validators used above do reject bad objects (so a pass means something)."""
    worker = json.loads(json.dumps(render({}).worker()))
    worker["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsNonroot"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(worker, "1.35.0")
    keda = render(VALUE_SETS["keda"])
    scaled = json.loads(json.dumps(keda.all("ScaledObject")[0]))
    scaled["spec"]["triggers"][0]["metadata"]["listLength"] = 5  # KEDA wants strings
    with pytest.raises(jsonschema.ValidationError):
        _validate(scaled, "1.35.0")
    auth = json.loads(json.dumps(keda.all("TriggerAuthentication")[0]))
    auth["spec"]["secretTargetRefs"] = auth["spec"].pop("secretTargetRef")
    with pytest.raises(jsonschema.ValidationError):
        _validate(auth, "1.35.0")


def test_rendering_is_deterministic(render: Any) -> None:
    for name in ("keda", "network-policy", "pools", "tls-ca-pem"):
        first = render(VALUE_SETS[name], cached=False).text
        second = render(VALUE_SETS[name], cached=False).text
        assert first == second, f"{name}: two renders differ"
