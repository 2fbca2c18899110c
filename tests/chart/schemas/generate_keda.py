"""Regenerate the vendored KEDA CRD schemas (keda-*.json) used by the chart tests.

KEDA's CRDs are not installable offline here, so the schemas are taken once from the PyPI package
`cloudcoil-models-keda` (pydantic models generated from KEDA's CRDs) and tightened like a structural CRD
schema with strict field validation: unknown fields are rejected. Run when bumping KEDA:

    pip install --target /tmp/keda-models cloudcoil-models-keda==2.16.1.0
    PYTHONPATH=/tmp/keda-models python tests/chart/schemas/generate_keda.py
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cloudcoil.models.keda import v1alpha1  # type: ignore[import-not-found]

HERE = Path(__file__).resolve().parent


def _tighten(node: Any) -> Any:
    if isinstance(node, dict):
        node = {k: _tighten(v) for k, v in node.items() if k not in ("title", "description", "default")}
        if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [_tighten(v) for v in node]
    return node


def main() -> None:
    for model, name in ((v1alpha1.ScaledObject, "keda-scaledobject.json"),
                        (v1alpha1.TriggerAuthentication, "keda-triggerauthentication.json")):
        schema = _tighten(model.model_json_schema(mode="validation"))
        schema["$comment"] = f"KEDA {model.__name__} (keda.sh/v1alpha1) from cloudcoil-models-keda 2.16.1.0"
        (HERE / name).write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
