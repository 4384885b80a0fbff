"""The chart's Grafana dashboard: every panel query parses as PromQL (`promtool check rules`, each query as a
recording rule, Grafana's variables replaced by values), selects one gateway by namespace and job, and reads only
series the gateway exports."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from clothing_gateway.metrics import Metrics
from tests.chart.conftest import objects, template, tool

VARIABLES = {"$namespace": "models", "$job": "clothing-clothing-model-gateway", "$__rate_interval": "2m"}


def dashboard() -> dict[str, Any]:
    rendered = template(tool("helm"), "--set", "dashboards.enabled=true", "--show-only", "templates/dashboards.yaml")
    (config_map,) = objects(rendered)
    return json.loads(config_map["data"]["clothing-model-gateway.json"])


def queries() -> list[str]:
    return [target["expr"] for panel in dashboard()["panels"] for target in panel["targets"]]


def exported_series() -> set[str]:
    """Every series name the gateway's metrics produce (counters' _total, histograms' _bucket/_count/_sum)."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}.get(family.type, ("",))
        names.update(family.name + suffix for suffix in suffixes)
    return names


def test_every_panel_query_parses_as_promql(tmp_path: Path) -> None:
    rules = []
    for index, expr in enumerate(queries()):
        for variable, value in VARIABLES.items():
            expr = expr.replace(variable, value)
        rules.append({"record": f"dashboard:query_{index}", "expr": expr})
    (tmp_path / "queries.yaml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = subprocess.run(
        [tool("promtool"), "check", "rules", "queries.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules)} rules found" in checked.stdout


def test_every_query_reads_one_gateways_exported_series() -> None:
    exported = exported_series()
    for expr in queries():
        assert 'namespace="$namespace", job="$job"' in expr, expr
        used = set(re.findall(r"\b(gateway_[a-z_]+)\{", expr))
        assert used, expr
        assert used <= exported, f"{expr}: {sorted(used - exported)} not exported by the gateway"


def test_the_dashboard_covers_what_operators_watch() -> None:
    titles = [panel["title"] for panel in dashboard()["panels"]]
    for needed in ("Requests by outcome", "Prediction latency", "In flight and queued, per pod", "Stage latency p99",
                   "Model calls by model, version label and outcome", "Models ready"):  # fmt: skip
        assert needed in titles
    variables = [variable["name"] for variable in dashboard()["templating"]["list"]]
    assert variables == ["datasource", "namespace", "job"]
