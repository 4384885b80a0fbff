"""KServe's own install manifests, from its Go module (the KSERVE_VERSION the controller is built from), adapted to
the test cluster, where the controller runs on the host instead of in a pod:

    kserve_config.py KSERVE_MODULE_DIR config               namespace `kserve` and its inferenceservice-config
    kserve_config.py KSERVE_MODULE_DIR webhooks URL CA_FILE the webhook configurations, calling URL (the host's
                                                            webhook server) and trusting CA_FILE
    kserve_config.py KSERVE_MODULE_DIR runtime IMAGE        the stock kserve-tensorflow-serving ClusterServingRuntime,
                                                            its image IMAGE, nothing else changed

What changes from KServe's files: the default deployment mode is Standard (no Knative here), no Ingress is created
(no ingress controller; the transformer's cluster-local Service is what the chart's tests call), and the webhooks
name a URL instead of the controller's in-cluster Service. Prints a YAML stream for `kubectl apply -f -`.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

import yaml


def config(module: Path) -> list[dict[str, Any]]:
    """The kserve namespace and KServe's inferenceservice-config, deploy and ingress set for this cluster."""
    config_map = yaml.safe_load((module / "config" / "configmap" / "inferenceservice.yaml").read_text())
    data = config_map["data"]
    data["deploy"] = json.dumps({**json.loads(data["deploy"]), "defaultDeploymentMode": "Standard"})
    data["ingress"] = json.dumps({**json.loads(data["ingress"]), "disableIngressCreation": True})
    config_map["metadata"]["namespace"] = "kserve"
    return [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kserve"}}, config_map]


def webhooks(module: Path, url: str, ca_file: Path) -> list[dict[str, Any]]:
    """KServe's webhook configurations with each webhook calling URL + its path, trusting the CA."""
    ca_bundle = base64.b64encode(ca_file.read_bytes()).decode()
    documents = [d for d in yaml.safe_load_all((module / "config" / "webhook" / "manifests.yaml").read_text()) if d]
    for document in documents:
        for hook in document["webhooks"]:
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"url": url.rstrip("/") + path, "caBundle": ca_bundle}
    return documents


def runtime(module: Path, image: str) -> list[dict[str, Any]]:
    """The stock TensorFlow ServingRuntime with its image set (KServe's kustomization sets it at install)."""
    document = yaml.safe_load((module / "config" / "runtimes" / "kserve-tensorflow-serving.yaml").read_text())
    (container,) = document["spec"]["containers"]
    container["image"] = image
    return [document]


def main(argv: list[str]) -> int:
    module, part, *args = argv
    documents = {
        "config": lambda: config(Path(module)),
        "webhooks": lambda: webhooks(Path(module), args[0], Path(args[1])),
        "runtime": lambda: runtime(Path(module), args[0]),
    }[part]()
    sys.stdout.write(yaml.safe_dump_all(documents, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
