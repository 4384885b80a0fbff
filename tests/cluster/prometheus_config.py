"""A Prometheus configuration from the ServiceMonitors and PrometheusRules a release created, as the Prometheus
Operator generates it, for a Prometheus server run on the test cluster's host (no operator: its images cannot be
pulled here). The translation is the operator's for what the chart uses (a label selector, the namespace, and per
endpoint a named port, path, interval and timeout): an endpointslice discovery in the ServiceMonitor's namespace
that keeps the endpoints of Services with those labels on that port, and the operator's target labels (namespace,
service, pod, container, job = the Service's name, endpoint = the port's name), which the chart's alert rules and
dashboards select on. Every rule group of the PrometheusRules goes into one rule file, unchanged.

    prometheus_config.py MONITORING_JSON KUBECONFIG OUT_DIR

MONITORING_JSON is `kubectl get servicemonitors,prometheusrules -o json`; writes OUT_DIR/prometheus.yml and
OUT_DIR/rules.yml.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

EVALUATION_INTERVAL = "5s"


def _label_name(key: str) -> str:
    """A Kubernetes label key as Prometheus' discovery names it: other than [a-zA-Z0-9_] becomes `_`."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", key)


def _quote_meta(value: str) -> str:
    """`value` as a literal in a Prometheus (RE2) regex, escaped as Go's regexp.QuoteMeta does."""
    return re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\1", value)


def scrape_config(monitor: dict[str, Any], number: int, endpoint: dict[str, Any], kubeconfig: str) -> dict[str, Any]:
    namespace, name = monitor["metadata"]["namespace"], monitor["metadata"]["name"]
    keep_services = [
        {
            "action": "keep",
            "source_labels": [
                f"__meta_kubernetes_service_label_{_label_name(key)}",
                f"__meta_kubernetes_service_labelpresent_{_label_name(key)}",
            ],
            "regex": f"({_quote_meta(value)});true",
        }
        for key, value in sorted(monitor["spec"]["selector"]["matchLabels"].items())
    ]
    target_labels = [
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
        {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job"},
        {"target_label": "endpoint", "replacement": endpoint["port"]},
    ]
    timeout = {"scrape_timeout": endpoint["scrapeTimeout"]} if "scrapeTimeout" in endpoint else {}
    return {
        "job_name": f"serviceMonitor/{namespace}/{name}/{number}",
        "metrics_path": endpoint.get("path", "/metrics"),
        "scrape_interval": endpoint.get("interval", "30s"),
        **timeout,
        "kubernetes_sd_configs": [
            {"role": "endpointslice", "kubeconfig_file": kubeconfig, "namespaces": {"names": [namespace]}}
        ],
        "relabel_configs": [
            *keep_services,
            {
                "action": "keep",
                "source_labels": ["__meta_kubernetes_endpointslice_port_name"],
                "regex": endpoint["port"],
            },
            {"action": "drop", "source_labels": ["__meta_kubernetes_pod_phase"], "regex": "(Failed|Succeeded)"},
            *target_labels,
        ],
    }


def main(monitoring_json: str, kubeconfig: str, out_dir: str) -> None:
    items = json.loads(Path(monitoring_json).read_text())["items"]
    monitors = [item for item in items if item["kind"] == "ServiceMonitor"]
    rules = [item for item in items if item["kind"] == "PrometheusRule"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    groups = [group for rule in rules for group in rule["spec"]["groups"]]
    (out / "rules.yml").write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    config = {
        "global": {"evaluation_interval": EVALUATION_INTERVAL},
        "rule_files": [str(out / "rules.yml")],
        "scrape_configs": [
            scrape_config(monitor, number, endpoint, kubeconfig)
            for monitor in monitors
            for number, endpoint in enumerate(monitor["spec"]["endpoints"])
        ],
    }
    (out / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    print(f"{len(config['scrape_configs'])} scrape configs, {len(groups)} rule groups in {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
