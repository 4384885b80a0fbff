"""The e2e's Prometheus configuration (prometheus_config.py) from the chart's rendered ServiceMonitors and
PrometheusRule: Prometheus' own checker accepts it and its rule file (`promtool check config`), and each
ServiceMonitor became a job that keeps its Service's endpoints on its port and scrapes its path."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from tests.chart.conftest import NAMESPACE, RELEASE, objects, template, tool
from tests.cluster.prometheus_config import main as prometheus_config

KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
"""


def test_the_chart_s_monitoring_becomes_a_configuration_prometheus_accepts(tmp_path: Path) -> None:
    manifest = template(
        tool("helm"), "--set", "alerts.enabled=true",
        "--api-versions", "monitoring.coreos.com/v1/ServiceMonitor",
        "--api-versions", "monitoring.coreos.com/v1/PrometheusRule",
    )  # fmt: skip
    monitoring = [item for item in objects(manifest) if item["kind"] in ("ServiceMonitor", "PrometheusRule")]
    (tmp_path / "monitoring.json").write_text(json.dumps({"items": monitoring}))
    (tmp_path / "kubeconfig").write_text(KUBECONFIG)
    prometheus_config(str(tmp_path / "monitoring.json"), str(tmp_path / "kubeconfig"), str(tmp_path / "out"))

    checked = subprocess.run(
        [tool("promtool"), "check", "config", "out/prometheus.yml"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 1 rule files found" in checked.stdout + checked.stderr

    jobs = {
        job["job_name"]: job
        for job in yaml.safe_load((tmp_path / "out" / "prometheus.yml").read_text())["scrape_configs"]
    }
    expected = {"gateway": ("http", "/metrics"), "tf-serving": ("rest", "/monitoring/prometheus/metrics")}
    assert set(jobs) == {f"serviceMonitor/{NAMESPACE}/{RELEASE}-clothing-model-{name}/0" for name in expected}
    for name, (port, path) in expected.items():
        job = jobs[f"serviceMonitor/{NAMESPACE}/{RELEASE}-clothing-model-{name}/0"]
        assert job["metrics_path"] == path
        keeps = {
            rule["source_labels"][0]: rule["regex"] for rule in job["relabel_configs"] if rule.get("action") == "keep"
        }
        assert keeps["__meta_kubernetes_endpointslice_port_name"] == port
        assert keeps["__meta_kubernetes_service_label_app_kubernetes_io_component"] == f"({name});true"
        assert job["kubernetes_sd_configs"][0]["namespaces"] == {"names": [NAMESPACE]}
