"""The chart's own files: helm lint --strict for every values case, values.schema.json generated from values.yaml
(and describing the same keys), and the README being helm-docs' output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.conftest import CASES, CHART, run, tool

# Definitions of Kubernetes types (passed through to the manifests): values.yaml sets only some of their fields.
# Every other object in the schema is the chart's own and must match values.yaml key for key.
KUBERNETES_TYPES = "#/$defs/kubernetes.json/"


@pytest.mark.parametrize("case", [case for case in CASES if case != "capabilities"])
def test_helm_lint_strict_passes(case: str) -> None:
    run(tool("helm"), "lint", "--strict", str(CHART), *CASES[case])


def test_values_schema_is_generated_from_values_yaml(tmp_path: Path) -> None:
    generated = tmp_path / "values.schema.json"
    run(tool("helm-values-schema-json"), "--output", str(generated), cwd=CHART)
    assert generated.read_text() == (CHART / "values.schema.json").read_text(), (
        "charts/clothing-model/values.schema.json is stale: run `make chart-schema` and commit it"
    )


def _resolve(schema: dict[str, Any], ref: str) -> dict[str, Any]:
    node: Any = schema
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def _compare(values: Any, node: dict[str, Any], schema: dict[str, Any], path: str, kubernetes_type: bool) -> list[str]:
    """Keys of values.yaml missing from the schema, and (outside Kubernetes types) schema keys missing from values."""
    ref = node.get("$ref")
    if ref:
        definition = _resolve(schema, ref)
        return _compare(values, definition, schema, path, kubernetes_type or ref.startswith(KUBERNETES_TYPES))
    if isinstance(values, list):
        items = node.get("items", {})
        return [
            err for i, v in enumerate(values) for err in _compare(v, items, schema, f"{path}[{i}]", kubernetes_type)
        ]
    if not isinstance(values, dict) or "properties" not in node:
        return []
    properties = node["properties"]
    errors = [f"{path}.{key}: in values.yaml, not in the schema" for key in values if key not in properties]
    if not kubernetes_type:
        errors += [f"{path}.{key}: in the schema, not in values.yaml" for key in properties if key not in values]
    for key, value in values.items():
        if key in properties:
            errors += _compare(value, properties[key], schema, f"{path}.{key}", kubernetes_type)
    return errors


def test_values_and_schema_describe_the_same_keys() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    top_level = {"properties": schema["properties"]}  # the root's $ref holds cross-field rules, not keys
    assert _compare(values, top_level, schema, "", False) == []


def test_every_schema_object_forbids_unknown_keys() -> None:
    """additionalProperties is false (or typed, for maps) wherever the schema lists properties. A node with a $ref is
    governed by its definition (checked under $defs); the properties inferred beside it only restate the default."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False
    loose: list[str] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if "$ref" not in node and "properties" in node and node.get("additionalProperties", True) is True:
                loose.append(path)
            for key, child in node.items():
                if key in ("if", "then", "else", "anyOf"):  # conditional parts and alternatives only add constraints
                    continue
                if "$ref" in node and key in ("properties", "items"):
                    continue
                walk(child, f"{path}/{key}")
        elif isinstance(node, list):
            for i, child in enumerate(node):
                walk(child, f"{path}/{i}")

    walk(schema["properties"], "#/properties")
    for name, bundled in schema["$defs"].items():  # the rules beside each file's $defs only add constraints
        walk(bundled["$defs"], f"#/$defs/{name}/$defs")
    assert loose == []


def test_readme_is_up_to_date_with_helm_docs(tmp_path: Path) -> None:
    copy = tmp_path / "clothing-model"
    shutil.copytree(CHART, copy)
    run(tool("helm-docs"), "--chart-search-root", str(tmp_path), "--log-level", "warning")
    assert (copy / "README.md").read_text() == (CHART / "README.md").read_text(), (
        "charts/clothing-model/README.md is stale: run `helm-docs --chart-search-root charts` and commit it"
    )
