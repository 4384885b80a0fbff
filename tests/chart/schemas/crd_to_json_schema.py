"""Derive the test fixtures for a CustomResourceDefinition (run by hand when the CRD is updated, never by tests).

    python tests/chart/schemas/crd_to_json_schema.py CRD.yaml --version v1beta1 \\
        --source "KServe v0.20.0 config/crd/full/serving.kserve.io_inferenceservices.yaml" --license Apache-2.0 \\
        --json-schema tests/chart/schemas/inferenceservice-serving.kserve.io-v1beta1.json \\
        --crd tests/cluster/fixtures/inferenceservices.serving.kserve.io.json

- `--json-schema`: the version's openAPIV3Schema as a JSON Schema (2020-12) for offline validation, as strict as a
  server-side apply with strict field validation: objects reject unknown fields unless the CRD preserves them,
  `nullable` becomes a null type, apiVersion and kind are constants. Identical subschemas (the Kubernetes types the
  CRD repeats: containers, volumes, affinity, ...) are written once under `$defs`.
- `--crd`: the CRD itself as compact JSON (for applying to a real API server), its source and license in annotations.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

MIN_SHARED_CHARS = 400  # subschemas at least this long that occur twice or more go to $defs
_DROPPED = frozenset(
    {
        "description",
        "nullable",
        "x-kubernetes-preserve-unknown-fields",
        "x-kubernetes-int-or-string",  # its anyOf [integer, string] stays
        "x-kubernetes-list-type",
        "x-kubernetes-list-map-keys",
        "x-kubernetes-map-type",
        "x-kubernetes-embedded-resource",
    }
)


def _subschemas(node: dict[str, Any], change: Callable[[Any, str], Any]) -> dict[str, Any]:
    """`node` with `change(subschema, name)` applied to each direct subschema (properties, items, ...), the other
    keywords (enum, default, pattern, ...) kept as they are; `name` is the property name or the keyword."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: change(sub, name) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = change(value, key)
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [change(sub, key) for sub in value]
        else:
            out[key] = value
    return out


def json_schema(node: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI v3 (structural) schema as JSON Schema."""
    out = _subschemas({k: v for k, v in node.items() if k not in _DROPPED}, lambda sub, _: json_schema(sub))
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _canonical(node: Any) -> str:
    return json.dumps(node, sort_keys=True, separators=(",", ":"))


def share_repeated(schema: dict[str, Any]) -> dict[str, Any]:
    """Move subschemas that occur more than once to `$defs`, named after the first property holding them, and
    replace each occurrence with a `$ref`."""
    counts: Counter[str] = Counter()

    def count(node: dict[str, Any], _: str = "") -> dict[str, Any]:
        counts[_canonical(node)] += 1
        return _subschemas(node, count)

    count(schema)
    names: dict[str, str] = {}
    defs: dict[str, Any] = {}

    def share(node: dict[str, Any], name: str) -> dict[str, Any]:
        text = _canonical(node)
        if counts[text] < 2 or len(text) < MIN_SHARED_CHARS:
            return _subschemas(node, lambda sub, key: share(sub, name + "Item" if key == "items" else key))
        if text not in names:
            names[text] = next(n for n in (name, *(f"{name}{i}" for i in range(2, 10_000))) if n not in defs)
            defs[names[text]] = {}  # reserved before descending
            defs[names[text]] = _subschemas(node, lambda sub, key: share(sub, name + "Item" if key == "items" else key))
        return {"$ref": f"#/$defs/{names[text]}"}

    top = _subschemas(schema, lambda sub, key: share(sub, key))
    return {**top, "$defs": dict(sorted(defs.items()))} if defs else top


def derive(crd: dict[str, Any], version: str, source: str, license_name: str) -> dict[str, Any]:
    """The JSON Schema of one version of the CRD."""
    spec = crd["spec"]
    (served,) = [v for v in spec["versions"] if v["name"] == version]
    schema = json_schema(served["schema"]["openAPIV3Schema"])
    properties = schema["properties"]
    properties["apiVersion"] = {"const": f"{spec['group']}/{version}"}
    properties["kind"] = {"const": spec["names"]["kind"]}
    properties["metadata"] = {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string", "pattern": "^[a-z]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}},
    }
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata", "spec"})
    comment = (
        f"Derived from the openAPIV3Schema of {crd['metadata']['name']} {version} in {source} ({license_name}) by "
        "tests/chart/schemas/crd_to_json_schema.py: unknown fields rejected unless the CRD preserves them, "
        "repeated subschemas shared in $defs; metadata.name follows the controller's naming rule."
    )
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$comment": comment, **share_repeated(schema)}


def annotated_crd(crd: dict[str, Any], source: str, license_name: str) -> dict[str, Any]:
    """The CRD with its source and license recorded in annotations (it carries no descriptions to strip)."""
    metadata = {**crd["metadata"]}
    metadata["annotations"] = {
        **metadata.get("annotations", {}),
        "clothing-model.test/source": source,
        "clothing-model.test/license": license_name,
    }
    return {**crd, "metadata": metadata}


def main(argv: list[str] | None = None) -> None:
    """Write the requested fixtures."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("crd", type=Path, help="the CRD YAML")
    parser.add_argument("--version", required=True, help="the CRD version to derive the JSON Schema of")
    parser.add_argument("--source", required=True, help="where the CRD comes from (release, path)")
    parser.add_argument("--license", dest="license_name", required=True, help="the CRD's license")
    parser.add_argument("--json-schema", type=Path, help="write the JSON Schema here")
    parser.add_argument("--crd", dest="crd_out", type=Path, help="write the compact CRD JSON here")
    args = parser.parse_args(argv)
    crd = yaml.safe_load(args.crd.read_text())
    if args.json_schema:
        schema = derive(crd, args.version, args.source, args.license_name)
        args.json_schema.write_text(json.dumps(schema, indent=1) + "\n")
    if args.crd_out:
        args.crd_out.parent.mkdir(parents=True, exist_ok=True)
        args.crd_out.write_text(
            json.dumps(annotated_crd(crd, args.source, args.license_name), separators=(",", ":")) + "\n"
        )


if __name__ == "__main__":
    main()
