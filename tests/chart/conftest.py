"""Chart test fixtures: the real helm binaries (found on PATH, as `make` sets it) render every values case once.

A case is the defaults, each per-environment file in values/, each ct file in charts/clothing-model/ci/, or the
capabilities fixture (ServiceMonitor and KEDA APIs served). Renders run in parallel threads: helm is a subprocess.
"""

from __future__ import annotations

import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

CHART = REPO / "charts" / "clothing-model"
HERE = Path(__file__).resolve().parent
RELEASE = "clothing"
NAMESPACE = "models"
KUBE_VERSION = "1.34.0"
CAPABILITIES = (
    "monitoring.coreos.com/v1/ServiceMonitor",
    "monitoring.coreos.com/v1/PrometheusRule",
    "keda.sh/v1alpha1/ScaledObject",
)


def _cases() -> dict[str, list[str]]:
    cases: dict[str, list[str]] = {"defaults": []}
    for path in sorted((REPO / "values").glob("*.yaml")):
        cases[f"values/{path.name}"] = ["-f", str(path)]
    for path in sorted((CHART / "ci").glob("*-values.yaml")):
        cases[f"ci/{path.name}"] = ["-f", str(path)]
    api_versions = [arg for api in CAPABILITIES for arg in ("--api-versions", api)]
    cases["capabilities"] = ["-f", str(HERE / "capabilities-values.yaml"), *api_versions]
    return cases


CASES = _cases()


def many_models_values(path: Path, count: int) -> Path:
    """A values file serving `count` models (`m00`, `m01`, ...) from one release, the first with two labelled
    versions: the scale the chart's `models` list is tested at."""
    model = yaml.safe_load((CHART / "ci" / "models-values.yaml").read_text())["models"][0]
    entries = [{**model, "name": f"m{index:02d}"} for index in range(count)]
    for entry in entries[1:]:
        del entry["versions"], entry["versionLabels"], entry["canary"], entry["shadow"]
    path.write_text(yaml.safe_dump({"models": entries}))
    return path


def tool(name: str) -> str:
    """Path of a pinned tool on PATH (`make` puts .tools/bin first); a missing tool fails the test."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found on PATH: run the chart tests through make (make setup installs it)")
    return path


def run(*args: str, cwd: Path = REPO) -> str:
    """Run a command, return its stdout; fail the test with its stderr when it exits non-zero."""
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stderr}{proc.stdout}")
    return proc.stdout


def template(helm: str, *args: str, release: str = RELEASE) -> str:
    """`helm template` of the chart in namespace `models` (release `clothing` unless told)."""
    return run(helm, "template", release, str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION, *args)


def objects(manifest: str) -> list[dict[str, Any]]:
    """The Kubernetes objects of a rendered manifest."""
    return [doc for doc in yaml.safe_load_all(manifest) if doc]


def _render_all(helm: str) -> dict[str, str]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(CASES, pool.map(lambda args: template(helm, *args), CASES.values()), strict=True))


@pytest.fixture(scope="session")
def renders() -> dict[str, str]:
    """Helm 3's render of every case."""
    return _render_all(tool("helm"))


@pytest.fixture(scope="session")
def renders_helm4() -> dict[str, str]:
    """Helm 4's render of every case."""
    return _render_all(tool("helm4"))
