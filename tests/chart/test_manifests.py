"""What the chart renders, for every values case: valid Kubernetes objects (1.29 through 1.34, strict), valid custom
resources, the same output under Helm 4, no name collisions between releases, restricted pods."""

from __future__ import annotations

import json
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from tests.chart.conftest import CASES, CHART, HERE, KUBE_VERSION, many_models_values, objects, template, tool

KUBERNETES_VERSIONS = ("1.29.0", "1.30.0", "1.31.0", "1.32.0", "1.33.0", "1.34.0")
# Custom resources: kubernetes-validate ships no schemas for them. The ServiceMonitor, PrometheusRule and ScaledObject
# fixtures hold the fields the chart renders; the InferenceService one is derived from KServe's whole CRD
# (crd_to_json_schema.py).
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring.coreos.com-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule-monitoring.coreos.com-v1.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject-keda.sh-v1alpha1.json",
    ("serving.kserve.io/v1beta1", "InferenceService"): "inferenceservice-serving.kserve.io-v1beta1.json",
}
KSERVE_CASE = "ci/kserve-values.yaml"
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@cache
def crd_validator(api_version: str, kind: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((HERE / "schemas" / CRD_SCHEMAS[(api_version, kind)]).read_text())
    return jsonschema.Draft202012Validator(schema)


def validate(obj: dict[str, Any], version: str) -> None:
    if (obj["apiVersion"], obj["kind"]) in CRD_SCHEMAS:
        crd_validator(obj["apiVersion"], obj["kind"]).validate(obj)
    else:
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("case", CASES)
def test_every_object_is_valid_for_kubernetes(renders: dict[str, str], case: str, version: str) -> None:
    errors = []
    for obj in objects(renders[case]):
        try:
            validate(obj, version)
        except (jsonschema.ValidationError, kubernetes_validate.SchemaNotFoundError) as err:
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {getattr(err, 'message', err)}")
    assert not errors, "\n".join(errors)


def test_capabilities_case_renders_the_custom_resources(renders: dict[str, str]) -> None:
    kinds = sorted(obj["kind"] for obj in objects(renders["capabilities"]))
    assert kinds.count("ServiceMonitor") == 2
    assert kinds.count("ScaledObject") == 2
    assert kinds.count("PrometheusRule") == 1
    assert "HorizontalPodAutoscaler" not in kinds


def test_kserve_case_renders_the_inference_service_and_no_workload_of_its_own(renders: dict[str, str]) -> None:
    kinds = sorted(obj["kind"] for obj in objects(renders[KSERVE_CASE]))
    assert kinds == ["ConfigMap", "InferenceService", "Pod", "Pod", "ServiceAccount"]  # + helm test data and pods


@pytest.mark.parametrize(
    ("case", "kind", "path", "value"),
    [
        ("capabilities", "ServiceMonitor", ("spec", "endpoints", 0, "intervall"), "30s"),
        ("capabilities", "ScaledObject", ("spec", "maxReplicas"), 3),
        ("capabilities", "PrometheusRule", ("spec", "groups", 1, "rules", 0, "severity"), "page"),
        (KSERVE_CASE, "InferenceService", ("spec", "predictor", "model", "storageUrl"), "s3://models/clothing"),
        (KSERVE_CASE, "InferenceService", ("spec", "transformer", "containers", 0, "securityContext", "runAsUSer"), 0),
    ],
)
def test_custom_resource_fixtures_reject_unknown_fields(
    renders: dict[str, str], case: str, kind: str, path: tuple[Any, ...], value: Any
) -> None:
    obj = next(o for o in objects(renders[case]) if o["kind"] == kind)
    node = obj
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError, match="Additional properties"):
        validate(obj, KUBE_VERSION)


@pytest.mark.parametrize("case", CASES)
def test_helm4_renders_the_same_objects(renders: dict[str, str], renders_helm4: dict[str, str], case: str) -> None:
    """Same objects in the same order (Helm 4 only separates documents with an extra blank line)."""
    assert objects(renders_helm4[case]) == objects(renders[case])


def test_two_releases_in_one_namespace_share_no_object_name() -> None:
    def names(release: str) -> set[tuple[str, str]]:
        return {(obj["kind"], obj["metadata"]["name"]) for obj in objects(template(tool("helm"), release=release))}

    assert not names("clothing") & names("clothing-canary")


@pytest.mark.parametrize("release", ["r" * 53, "clothing-model-" + "x" * 38])
def test_object_names_stay_distinct_and_valid_for_the_longest_release_name(release: str) -> None:
    """Helm accepts release names of up to 53 characters; every object of every component (and the test hooks) still
    gets its own name, a DNS label of at most 63 characters."""
    for case in ("defaults", "ci/scaling-ingress-values.yaml", "capabilities", "ci/models-values.yaml"):
        names = [
            (obj["kind"], obj["metadata"]["name"])
            for obj in objects(template(tool("helm"), *CASES[case], release=release))
        ]
        assert len(names) == len(set(names)), f"{case}: {sorted(names)}"
        assert all(len(name) <= 63 and DNS_LABEL.match(name) for _, name in names), f"{case}: {sorted(names)}"


def test_fifty_models_render_one_tf_serving_config_one_contract_list_and_a_test_per_model(tmp_path: Path) -> None:
    values = many_models_values(tmp_path / "models.yaml", 50)
    rendered = objects(template(tool("helm"), "-f", str(values)))
    for obj in rendered:
        validate(obj, KUBE_VERSION)
    config_maps = {obj["metadata"]["name"]: obj.get("data", {}) for obj in rendered if obj["kind"] == "ConfigMap"}
    assert config_maps["clothing-clothing-model-tf-serving"]["models.config"].count("config {") == 50
    contracts = json.loads(config_maps["clothing-clothing-model-gateway"]["model.json"])
    assert [contract["name"] for contract in contracts] == [f"m{index:02d}" for index in range(50)]
    tests = [obj for obj in rendered if obj["kind"] == "Pod" and "test-predict" in obj["metadata"]["name"]]
    assert len(tests) == 52  # one per model, and one per version label of m00
    assert len([obj for obj in rendered if obj["kind"] == "Deployment"]) == 2


def test_model_images_as_image_volumes_are_valid_from_kubernetes_1_33_and_restricted() -> None:
    """`delivery: volume` renders `image` volumes (with subPath, Kubernetes >= 1.33); the other cases cover `copy`."""
    manifest = template(
        tool("helm"), "-f", str(CHART / "ci" / "model-images-values.yaml"),
        "--set", "tfServing.modelSource.modelImages.delivery=volume",
    )  # fmt: skip
    for version in ("1.33.0", "1.34.0"):
        for obj in objects(manifest):
            validate(obj, version)
    tf_serving = next(
        obj for obj in objects(manifest)
        if obj["kind"] == "Deployment" and obj["metadata"]["labels"]["app.kubernetes.io/component"] == "tf-serving"
    )  # fmt: skip
    volumes = tf_serving["spec"]["template"]["spec"]["volumes"]
    assert [volume["image"]["reference"].split("@")[0] for volume in volumes if "image" in volume] == [
        "registry.example.com/models/clothing-model:1",
        "registry.example.com/models/clothing-model",
    ]
    proc = pss_check(manifest)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def pss_check(manifest: str) -> subprocess.CompletedProcess[str]:
    """`pss-check`: the restricted Pod Security Standard checked by the policy code of the API server's PodSecurity
    admission (k8s.io/pod-security-admission), offline, as an API server of the chart tests' Kubernetes minor."""
    minor = "v" + ".".join(KUBE_VERSION.split(".")[:2])
    return subprocess.run(
        [tool("pss-check"), f"--kube-version={minor}", "-"],
        input=manifest,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_every_pod_passes_the_restricted_pod_security_standard(renders: dict[str, str]) -> None:
    for case, manifest in renders.items():
        proc = pss_check(manifest)
        assert proc.returncode == 0, f"{case}: {proc.stdout}{proc.stderr}"
        checked = int(proc.stdout.strip().splitlines()[-1].split()[0])
        assert checked >= 2, f"{case}: only {checked} workload(s) found"


def test_the_pod_security_check_refuses_an_insecure_override() -> None:
    manifest = template(tool("helm"), "--set", "gateway.containerSecurityContext.allowPrivilegeEscalation=true")
    proc = pss_check(manifest)
    assert proc.returncode == 1
    assert 'Deployment clothing-clothing-model-gateway: violates PodSecurity "restricted:latest"' in proc.stdout
    assert "allowPrivilegeEscalation != false" in proc.stdout


def _component_pod(name: str, component: dict[str, Any]) -> dict[str, Any]:
    """The pod KServe makes of an InferenceService component: its pod fields, and for the predictor the runtime's
    container (TF Serving, as kserve-container) merged with the model's container fields."""
    kserve_fields = {"minReplicas", "maxReplicas", "scaleMetric", "scaleTarget", "model"}
    spec = {key: value for key, value in component.items() if key not in kserve_fields}
    if "model" in component:
        model_fields = {"modelFormat", "runtime", "runtimeVersion", "storageUri"}
        container = {key: value for key, value in component["model"].items() if key not in model_fields}
        spec["containers"] = [{"name": "kserve-container", "image": "tensorflow/serving:2.6.2", **container}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


@pytest.mark.parametrize("override", [None, "gateway.containerSecurityContext.allowPrivilegeEscalation=true"])
def test_inference_service_pods_pass_the_restricted_pod_security_standard(override: str | None) -> None:
    overrides = ["--set", override] if override else []
    manifest = template(tool("helm"), "-f", str(CHART / KSERVE_CASE), *overrides)
    isvc = next(obj for obj in objects(manifest) if obj["kind"] == "InferenceService")
    pods = [_component_pod(name, isvc["spec"][name]) for name in ("predictor", "transformer")]
    for pod in pods:
        kubernetes_validate.validate(pod, KUBE_VERSION, strict=True)
    proc = pss_check("\n---\n".join(json.dumps(pod) for pod in pods))
    if override is None:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stdout.strip().splitlines()[-1].split()[0] == "2"
    else:
        assert proc.returncode == 1
        assert "Pod transformer: violates" in proc.stdout
