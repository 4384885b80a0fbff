"""The chart's own files: helm lint --strict for every values case, values.yaml and values.schema.json describing
the same keys, and the README being helm-docs' output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.conftest import CASES, CHART, run, tool

# Schema definitions that describe Kubernetes types (passed through to the manifests): values.yaml sets only some
# of their fields. Every other object in the schema is the chart's own and must match values.yaml key for key.
KUBERNETES_TYPES = {
    "#/$defs/resources",
    "#/$defs/podSecurityContext",
    "#/$defs/containerSecurityContext",
    "#/$defs/seccompProfile",
    "#/$defs/envVar",
    "#/$defs/toleration",
    "#/$defs/affinity",
    "#/$defs/hpaBehavior",
    "#/$defs/labelSelector",
    "#/$defs/topologySpreadConstraint",
    "#/$defs/networkPolicyPeer",
    "#/$defs/networkPolicyRule",
}


@pytest.mark.parametrize("case", [case for case in CASES if case != "capabilities"])
def test_helm_lint_strict_passes(case: str) -> None:
    run(tool("helm"), "lint", "--strict", str(CHART), *CASES[case])


def _compare(values: Any, schema: dict[str, Any], defs: dict[str, Any], path: str, kubernetes_type: bool) -> list[str]:
    """Keys of values.yaml missing from the schema, and (outside Kubernetes types) schema keys missing from values."""
    ref = schema.get("$ref")
    if ref:
        return _compare(values, defs[ref.rsplit("/", 1)[1]], defs, path, kubernetes_type or ref in KUBERNETES_TYPES)
    if isinstance(values, list):
        items = schema.get("items", {})
        return [err for i, v in enumerate(values) for err in _compare(v, items, defs, f"{path}[{i}]", kubernetes_type)]
    if not isinstance(values, dict) or "properties" not in schema:
        return []
    properties = schema["properties"]
    errors = [f"{path}.{key}: in values.yaml, not in the schema" for key in values if key not in properties]
    if not kubernetes_type:
        errors += [f"{path}.{key}: in the schema, not in values.yaml" for key in properties if key not in values]
    for key, value in values.items():
        if key in properties:
            errors += _compare(value, properties[key], defs, f"{path}.{key}", kubernetes_type)
    return errors


def test_values_and_schema_describe_the_same_keys() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert _compare(values, schema, schema["$defs"], "", False) == []


def test_every_schema_object_forbids_unknown_keys() -> None:
    """additionalProperties is false (or typed, for maps) wherever the schema lists properties."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    loose: list[str] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if "properties" in node and node.get("additionalProperties", True) is True:
                loose.append(path)
            for key, child in node.items():
                if key not in ("if", "then", "else"):  # conditional parts only add constraints
                    walk(child, f"{path}/{key}")
        elif isinstance(node, list):
            for i, child in enumerate(node):
                walk(child, f"{path}/{i}")

    walk(schema, "#")
    assert loose == []


def test_readme_is_up_to_date_with_helm_docs(tmp_path: Path) -> None:
    copy = tmp_path / "clothing-model"
    shutil.copytree(CHART, copy)
    run(tool("helm-docs"), "--chart-search-root", str(tmp_path), "--log-level", "warning")
    assert (copy / "README.md").read_text() == (CHART / "README.md").read_text(), (
        "charts/clothing-model/README.md is stale: run `helm-docs --chart-search-root charts` and commit it"
    )
