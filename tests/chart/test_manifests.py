"""What the chart renders, for every values case: valid Kubernetes objects (1.29 and 1.34, strict), valid custom
resources, the same output under Helm 4, no name collisions between releases, restricted pods."""

from __future__ import annotations

import json
import subprocess
from functools import cache
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from tests.chart.conftest import CASES, HERE, KUBE_VERSION, objects, template, tool

KUBERNETES_VERSIONS = ("1.29.0", "1.34.0")
# Custom resources: kubernetes-validate ships no schemas for them; our fixtures hold the fields the chart renders.
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring.coreos.com-v1.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject-keda.sh-v1alpha1.json",
}


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
    assert "HorizontalPodAutoscaler" not in kinds


@pytest.mark.parametrize(
    ("kind", "path", "value"),
    [("ServiceMonitor", ("spec", "endpoints", 0, "intervall"), "30s"), ("ScaledObject", ("spec", "maxReplicas"), 3)],
)
def test_custom_resource_fixtures_reject_unknown_fields(
    renders: dict[str, str], kind: str, path: tuple[Any, ...], value: Any
) -> None:
    obj = next(o for o in objects(renders["capabilities"]) if o["kind"] == kind)
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


def pss_check(manifest: str) -> subprocess.CompletedProcess[str]:
    """`kube pss-check`: the restricted Pod Security Standard checked by the policy code of the API server's
    PodSecurity admission (k8s.io/pod-security-admission), offline."""
    return subprocess.run(
        [tool("pss-check"), "-"], input=manifest, capture_output=True, text=True, timeout=120, check=False
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
