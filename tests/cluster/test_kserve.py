"""The kserve-mode release against a real API server: KServe's InferenceService CRD (tests/cluster/fixtures, KServe
v0.20.0, Apache-2.0, made by tests/chart/schemas/crd_to_json_schema.py) is applied, then the release is submitted
with `--dry-run=server` in a namespace enforcing the restricted Pod Security Standard. No KServe controller runs:
this checks what the API server checks (the CRD's schema, strict field validation, admission)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.conftest import CHART, REPO, Cluster

CRD = Path(__file__).resolve().parent / "fixtures" / "inferenceservices.serving.kserve.io.json"
KSERVE_VALUES = CHART / "ci" / "kserve-values.yaml"
USER_VALUES = REPO / "values" / "kserve.yaml"  # what README's KServe section installs
NAMESPACE = "models-kserve"


def established(cluster: Cluster) -> bool:
    conditions = cluster.get("crd", "inferenceservices.serving.kserve.io").get("status", {}).get("conditions") or []
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def kserve_namespace(cluster: Cluster) -> Iterator[str]:
    # Server-side apply: the CRD (640 KB) is too big for client-side apply's last-applied-configuration annotation.
    cluster.kubectl("apply", "--server-side", "-f", str(CRD))
    wait_until(lambda: established(cluster), what="the InferenceService CRD to be established")
    cluster.restricted_namespace(NAMESPACE)
    yield NAMESPACE
    cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false")
    cluster.kubectl("delete", "-f", str(CRD), "--wait=false")


def rendered(cluster: Cluster, *helm_args: str, values: Path = KSERVE_VALUES) -> str:
    return cluster.helm("template", "clothing", str(CHART), "-n", NAMESPACE, "-f", str(values), *helm_args).stdout


def dry_run(cluster: Cluster, manifest: str) -> Any:
    return cluster.run_stdin(manifest, "kubectl", "apply", "-n", NAMESPACE, "--dry-run=server", "-f", "-", check=False)


@pytest.mark.parametrize("values", [KSERVE_VALUES, USER_VALUES], ids=["ci", "values-kserve"])
def test_kserve_release_is_admitted_by_the_api_server(cluster: Cluster, kserve_namespace: str, values: Path) -> None:
    installed = cluster.helm(
        "install", "clothing", str(CHART), "-n", kserve_namespace, "-f", str(values), "--dry-run=server"
    )
    assert "Warning" not in installed.stderr, installed.stderr
    applied = dry_run(cluster, rendered(cluster, values=values))
    assert applied.returncode == 0, applied.stderr
    assert "Warning" not in applied.stderr, applied.stderr
    assert "inferenceservice.serving.kserve.io/clothing-model created (server dry run)" in applied.stdout
    assert "serviceaccount/clothing-clothing-model-predictor created (server dry run)" in applied.stdout
    assert "pod/clothing-clothing-model-test-predict created (server dry run)" in applied.stdout


def test_one_inference_service_per_model_is_admitted(cluster: Cluster, kserve_namespace: str) -> None:
    applied = dry_run(cluster, rendered(cluster, values=CHART / "ci" / "kserve-models-values.yaml"))
    assert applied.returncode == 0, applied.stderr
    assert "Warning" not in applied.stderr, applied.stderr
    for model in ("clothing-model", "shoe-types"):
        assert f"inferenceservice.serving.kserve.io/clothing-model-{model} created (server dry run)" in applied.stdout
        assert f"pod/clothing-clothing-model-test-predict-{model} created (server dry run)" in applied.stdout


@pytest.mark.parametrize(
    ("path", "value", "error"),
    [
        (("spec", "predictor", "scaleMetric"), "gpu", 'Unsupported value: "gpu"'),
        (
            ("spec", "predictor", "model", "storageUrl"),
            "s3://models",
            'unknown field "spec.predictor.model.storageUrl"',
        ),
        (("spec", "transformer", "minReplicas"), "one", "Invalid value"),
    ],
)
def test_the_crd_schema_is_enforced(
    cluster: Cluster, kserve_namespace: str, path: tuple[str, ...], value: Any, error: str
) -> None:
    isvc = next(doc for doc in yaml.safe_load_all(rendered(cluster)) if doc and doc["kind"] == "InferenceService")
    node = isvc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    refused = dry_run(cluster, json.dumps(isvc))
    assert refused.returncode != 0
    assert error in refused.stderr, refused.stderr
