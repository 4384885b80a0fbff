"""The chart against a real API server: server-side validation, restricted Pod Security admission and the whole
release lifecycle (install, upgrade, rollback, uninstall) with the controller-manager acting on it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.conftest import many_models_values
from tests.cluster.conftest import CHART, REPO, Cluster

# The per-environment values of plain Kubernetes mode (values/kserve.yaml is tested in test_kserve.py).
VALUES = sorted(path for path in (REPO / "values").glob("*.yaml") if "\nmode: kserve\n" not in path.read_text())
PSA_WARNING = 'would violate PodSecurity "restricted:latest"'


@pytest.fixture(scope="module")
def models(cluster: Cluster) -> str:
    cluster.restricted_namespace("models")
    return "models"


def release_objects(cluster: Cluster, namespace: str, release: str) -> list[str]:
    """Every namespaced object of a release (by its instance label), as kind/name."""
    kinds = (
        "deployments,replicasets,pods,services,configmaps,serviceaccounts,poddisruptionbudgets,networkpolicies,"
        "horizontalpodautoscalers,ingresses,secrets"
    )
    items = cluster.get(kinds, "-n", namespace, "-l", f"app.kubernetes.io/instance={release}")["items"]
    return sorted(f"{i['kind']}/{i['metadata']['name']}" for i in items)


def wait_until(predicate: Any, timeout: float = 60, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def server_dry_run(cluster: Cluster, namespace: str, *helm_args: str) -> Any:
    """Render the chart, then submit every object to the API server with `--dry-run=server`: admission (Pod
    Security included) and server-side validation run, nothing is stored."""
    rendered = cluster.helm("template", "dry", str(CHART), "-n", namespace, *helm_args).stdout
    return cluster.run_stdin(rendered, "kubectl", "apply", "-n", namespace, "--dry-run=server", "-f", "-", check=False)


@pytest.mark.parametrize("values", [None, *VALUES], ids=["defaults", *(v.stem for v in VALUES)])
def test_server_side_dry_run_is_admitted_without_warnings(cluster: Cluster, models: str, values: Any) -> None:
    values_args = [] if values is None else ["-f", str(values)]
    installed = cluster.helm("install", "dry", str(CHART), "-n", models, "--dry-run=server", *values_args)
    assert "Warning" not in installed.stderr, installed.stderr
    applied = server_dry_run(cluster, models, *values_args)
    assert applied.returncode == 0, applied.stderr
    assert "Warning" not in applied.stderr, applied.stderr
    assert "deployment.apps/dry-clothing-model-gateway created (server dry run)" in applied.stdout


def test_a_release_of_fifty_models_is_admitted(cluster: Cluster, models: str, tmp_path: Path) -> None:
    values = many_models_values(tmp_path / "models.yaml", 50)
    applied = server_dry_run(cluster, models, "-f", str(values))
    assert applied.returncode == 0, applied.stderr
    assert "Warning" not in applied.stderr, applied.stderr
    assert "configmap/dry-clothing-model-tf-serving created (server dry run)" in applied.stdout
    assert applied.stdout.count("-test-predict-m") == 52


@pytest.mark.parametrize("delivery", ["copy", "volume"])
def test_model_images_are_admitted_in_a_restricted_namespace(cluster: Cluster, models: str, delivery: str) -> None:
    """Model images copied by init containers, or mounted as `image` volumes: server-side validation and restricted
    Pod Security admission accept both, and the API server keeps the volumes (it has the ImageVolume gate on, as
    1.35 by default; with the gate off it drops them silently, which this test would catch)."""
    rendered = cluster.helm(
        "template", "dry", str(CHART), "-n", models, "-f", str(CHART / "ci" / "model-images-values.yaml"),
        "--set", f"tfServing.modelSource.modelImages.delivery={delivery}", "-s", "templates/tf-serving-deployment.yaml",
    ).stdout  # fmt: skip
    applied = cluster.run_stdin(
        rendered, "kubectl", "apply", "-n", models, "--dry-run=server", "-o", "json", "-f", "-", check=False
    )
    assert applied.returncode == 0, applied.stderr
    assert "Warning" not in applied.stderr, applied.stderr
    pod = json.loads(applied.stdout)["spec"]["template"]["spec"]
    if delivery == "copy":
        assert [c["name"] for c in pod["initContainers"]] == ["model-copier", "model-image-0", "model-image-1"]
    else:
        assert [v["name"] for v in pod["volumes"] if "image" in v] == ["model-image-0", "model-image-1"]
        mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        assert mounts["model-image-1"] == "/models/clothing-model/2"


def test_an_insecure_override_is_refused_with_the_reason(cluster: Cluster, models: str) -> None:
    insecure = ["--set", "gateway.containerSecurityContext.allowPrivilegeEscalation=true"]
    warned = server_dry_run(cluster, models, *insecure)
    assert f'Warning: {PSA_WARNING}: allowPrivilegeEscalation != false (container "gateway"' in warned.stderr
    # Pods themselves are refused by the enforce label: the helm test pods are plain Pods.
    rendered = cluster.helm(
        "template", "insecure", str(CHART), "-n", models, *insecure, "--show-only", "templates/tests/test-ready.yaml"
    ).stdout
    refused = cluster.run_stdin(rendered, "kubectl", "apply", "-n", models, "--dry-run=server", "-f", "-", check=False)
    assert refused.returncode != 0
    assert "is forbidden: violates PodSecurity" in refused.stderr, refused.stderr


def test_install_upgrade_rollback_uninstall(cluster: Cluster, models: str) -> None:
    cluster.helm("install", "clothing", str(CHART), "-n", models)
    deployments = {
        d["metadata"]["name"]
        for d in cluster.get("deployments", "-n", models, "-l", "app.kubernetes.io/instance=clothing")["items"]
    }
    assert deployments == {"clothing-clothing-model-gateway", "clothing-clothing-model-tf-serving"}

    def replica_sets_with_pods() -> bool:
        sets = cluster.get("replicasets", "-n", models, "-l", "app.kubernetes.io/instance=clothing")["items"]
        pods = cluster.get("pods", "-n", models, "-l", "app.kubernetes.io/instance=clothing")["items"]
        return len(sets) == 2 and len(pods) >= 3  # controller-manager acted; restricted admission let the pods in

    wait_until(replica_sets_with_pods, what="ReplicaSets and their pods")

    cluster.helm("upgrade", "clothing", str(CHART), "-n", models, "--set", "gateway.logLevel=debug")
    gateway = cluster.get("deployment", "clothing-clothing-model-gateway", "-n", models)
    env = {e["name"]: e.get("value") for e in gateway["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["GATEWAY_LOG_LEVEL"] == "debug"
    assert int(gateway["metadata"]["generation"]) == 2

    cluster.helm("rollback", "clothing", "1", "-n", models)
    gateway = cluster.get("deployment", "clothing-clothing-model-gateway", "-n", models)
    env = {e["name"]: e.get("value") for e in gateway["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["GATEWAY_LOG_LEVEL"] == "info"
    history = json.loads(cluster.helm("history", "clothing", "-n", models, "-o", "json").stdout)
    assert [h["revision"] for h in history] == [1, 2, 3]

    cluster.helm("uninstall", "clothing", "-n", models, "--wait")
    wait_until(lambda: not release_objects(cluster, models, "clothing"), what="the release's objects to be deleted")
    assert cluster.get("secrets", "-n", models, "-l", "owner=helm,name=clothing")["items"] == []


def test_releases_coexist_in_one_namespace_and_across_namespaces(cluster: Cluster, models: str) -> None:
    cluster.restricted_namespace("models-b")
    cluster.helm("install", "one", str(CHART), "-n", models)
    cluster.helm("install", "two", str(CHART), "-n", models)
    cluster.helm("install", "one", str(CHART), "-n", "models-b")
    try:
        for namespace, release in ((models, "one"), (models, "two"), ("models-b", "one")):
            objects = release_objects(cluster, namespace, release)
            assert f"Deployment/{release}-clothing-model-gateway" in objects
            gateway = cluster.get("deployment", f"{release}-clothing-model-gateway", "-n", namespace)
            env = {e["name"]: e.get("value") for e in gateway["spec"]["template"]["spec"]["containers"][0]["env"]}
            assert env["TF_SERVING_HOST"] == f"{release}-clothing-model-tf-serving.{namespace}.svc.cluster.local:8500"
    finally:
        cluster.helm("uninstall", "one", "-n", models)
        cluster.helm("uninstall", "two", "-n", models)
        cluster.helm("uninstall", "one", "-n", "models-b")


def _first(manifests: str, kind: str) -> dict[str, Any]:
    return next(d for d in yaml.safe_load_all(manifests) if d and d["kind"] == kind)


def test_server_side_validation_catches_what_offline_schemas_miss(cluster: Cluster, models: str) -> None:
    import kubernetes_validate

    rendered = cluster.helm("template", "bad", str(CHART), "-n", models).stdout
    service = _first(rendered, "Service")
    service["spec"]["ports"].append({**service["spec"]["ports"][0], "port": 81})  # a duplicate port name
    deployment = _first(rendered, "Deployment")
    deployment["metadata"]["labels"]["team"] = "-not a label value-"
    for obj in (service, deployment):
        kubernetes_validate.validate(obj, "1.34.0", strict=True)  # the offline schema accepts both
        refused = cluster.run_stdin(
            json.dumps(obj), "kubectl", "apply", "-n", models, "--dry-run=server", "-f", "-", check=False
        )
        assert refused.returncode != 0
        assert "Invalid value" in refused.stderr or "Duplicate value" in refused.stderr, refused.stderr
