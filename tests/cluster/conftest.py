"""A real control plane (etcd + kube-apiserver + controller-manager + scheduler) for the chart's lifecycle tests.

Started once per session by tools/cluster/apiserver-up.sh and stopped by apiserver-down.sh. A missing
prerequisite fails the tests loudly; nothing is skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "clothing-model"
KUBECONFIG = REPO / ".tools" / "cluster" / "kubeconfig"


@dataclass
class Cluster:
    """Runs helm and kubectl against the control plane."""

    env: dict[str, str]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(list(args), capture_output=True, text=True, env=self.env, timeout=300)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("helm", *args, check=check)

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("kubectl", *args, check=check)

    def get(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def restricted_namespace(self, name: str) -> None:
        """Create a namespace that enforces, warns and audits the restricted Pod Security Standard."""
        manifest = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": name,
                "labels": {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn", "audit")},
            },
        }
        self.run_stdin(json.dumps(manifest), "kubectl", "apply", "-f", "-")

    def run_stdin(self, data: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(list(args), input=data, capture_output=True, text=True, env=self.env, timeout=300)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    up = subprocess.run(["bash", str(REPO / "tools" / "cluster" / "apiserver-up.sh")], capture_output=True, text=True)
    if up.returncode != 0:
        raise AssertionError(f"the control plane did not start:\n{up.stdout}\n{up.stderr}")
    env = {**os.environ, "KUBECONFIG": str(KUBECONFIG)}
    env["PATH"] = f"{REPO / '.tools' / 'bin'}:{env['PATH']}"
    yield Cluster(env)
    subprocess.run(["bash", str(REPO / "tools" / "cluster" / "apiserver-down.sh")], capture_output=True, text=True)
