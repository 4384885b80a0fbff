"""The chart's PrometheusRule under Prometheus' own tooling (promtool, pinned in tools/versions.env): every rule and
annotation template parses (`promtool check rules`), and each alert fires on the series that should fire it, only
after its `for`, and stays silent on healthy ones (`promtool test rules`, against the rendered expressions; the
annotations are checked by the parse, not compared)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.conftest import CHART, NAMESPACE, RELEASE, objects, template, tool

JOB = f"{RELEASE}-clothing-model-gateway"
SELECTOR = f'namespace="{NAMESPACE}", job="{JOB}"'
PREDICT = f'{SELECTOR}, route="/predict", method="POST"'


def rendered_rule(*values: str) -> dict[str, Any]:
    manifest = template(
        tool("helm"), "--set", "alerts.enabled=true", "--api-versions", "monitoring.coreos.com/v1/PrometheusRule",
        "--show-only", "templates/prometheusrule.yaml", *values,
    )  # fmt: skip
    (rule,) = objects(manifest)
    return rule


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def rules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The rendered rule groups (models with a canary), as promtool reads them, annotations left out."""
    groups = rendered_rule("-f", str(CHART / "ci" / "models-values.yaml"))["spec"]["groups"]
    for group in groups:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    path = tmp_path_factory.mktemp("rules") / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    return path


def test_every_rule_and_annotation_template_parses(tmp_path: Path) -> None:
    spec = rendered_rule("-f", str(CHART / "ci" / "models-values.yaml"), "--set", "alerts.runbookUrl=https://r.example")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": spec["spec"]["groups"]}))
    checked = promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    alerts = {rule["alert"] for group in spec["spec"]["groups"] for rule in group["rules"] if "alert" in rule}
    assert alerts == {
        "GatewayErrorBudgetBurn", "GatewayLatencyBudgetBurn", "ModelNotAvailable", "GatewaySaturated",
        "GatewayShedding", "CanaryErrorRateHigh",
    }  # fmt: skip
    assert all(
        rule["annotations"]["runbook_url"] == "https://r.example"
        for group in spec["spec"]["groups"]
        for rule in group["rules"]
        if "alert" in rule
    )


def test_the_rule_is_rendered_only_when_asked_and_the_api_is_served() -> None:
    for args in (["--set", "alerts.enabled=false", "--api-versions", "monitoring.coreos.com/v1/PrometheusRule"],
                 ["--set", "alerts.enabled=true"]):  # fmt: skip
        kinds = {obj["kind"] for obj in objects(template(tool("helm"), *args))}
        assert "PrometheusRule" not in kinds


def _alerts(name: str, at: str, *expected: dict[str, str]) -> dict[str, Any]:
    return {"eval_time": at, "alertname": name, "exp_alerts": [{"exp_labels": labels} for labels in expected]}


CASES: dict[str, dict[str, Any]] = {
    "errors burn the budget: page and ticket": {
        "input_series": [
            {"series": f'gateway_requests_total{{{PREDICT}, status="200", outcome="ok"}}', "values": "0+100x180"},
            {"series": f'gateway_requests_total{{{PREDICT}, status="503", outcome="model_unavailable"}}',
             "values": "0+10x180"},
        ],
        "alert_rule_test": [
            _alerts("GatewayErrorBudgetBurn", "70m",
                    {"severity": "page", "namespace": NAMESPACE, "job": JOB},
                    {"severity": "ticket", "namespace": NAMESPACE, "job": JOB}),
            _alerts("GatewayLatencyBudgetBurn", "70m"),
        ],
    },
    "a healthy error rate pages nobody": {
        "input_series": [
            {"series": f'gateway_requests_total{{{PREDICT}, status="200", outcome="ok"}}', "values": "0+2000x180"},
            {"series": f'gateway_requests_total{{{PREDICT}, status="502", outcome="download_failed"}}',
             "values": "0+1x180"},
            {"series": f'gateway_requests_total{{{PREDICT}, status="400", outcome="invalid_url"}}',
             "values": "0+500x180"},  # client errors spend no budget
        ],
        "alert_rule_test": [_alerts("GatewayErrorBudgetBurn", "170m")],
    },
    "slow predictions burn the latency budget": {
        "input_series": [
            {"series": f'gateway_request_duration_seconds_bucket{{{PREDICT}, outcome="ok", le="1.0"}}',
             "values": "0+80x180"},
            {"series": f'gateway_request_duration_seconds_count{{{PREDICT}, outcome="ok"}}', "values": "0+100x180"},
        ],
        "alert_rule_test": [
            _alerts("GatewayLatencyBudgetBurn", "70m",
                    {"severity": "page", "namespace": NAMESPACE, "job": JOB},
                    {"severity": "ticket", "namespace": NAMESPACE, "job": JOB}),
        ],
    },
    "a model not ready for two minutes": {
        "input_series": [
            {"series": f'gateway_model_ready{{{SELECTOR}, model="clothing-model", pod="g-1"}}',
             "values": "1 1 0 0 0 0 0"},
            {"series": f'gateway_model_ready{{{SELECTOR}, model="Shoe_Types", pod="g-1"}}', "values": "1 1 1 1 1 1 1"},
        ],
        "alert_rule_test": [
            _alerts("ModelNotAvailable", "3m"),
            _alerts("ModelNotAvailable", "5m",
                    {"severity": "page", "namespace": NAMESPACE, "job": JOB, "model": "clothing-model"}),
        ],
    },
    "a pod near its in-flight bound, and refusals": {
        "input_series": [
            {"series": f'gateway_in_flight_requests{{{SELECTOR}, pod="g-1"}}', "values": "900x10"},
            {"series": f'gateway_in_flight_requests{{{SELECTOR}, pod="g-2"}}', "values": "100x10"},
            {"series": f'gateway_shed_requests_total{{{SELECTOR}, pod="g-1", bound="in_flight"}}', "values": "0+30x10"},
        ],
        "alert_rule_test": [
            _alerts("GatewaySaturated", "6m", {"severity": "ticket", "namespace": NAMESPACE, "pod": "g-1"}),
            _alerts("GatewayShedding", "7m",
                    {"severity": "ticket", "namespace": NAMESPACE, "job": JOB, "bound": "in_flight"}),
        ],
    },
    "a canary failing more than stable": {
        "input_series": [
            {"series": f'gateway_model_duration_seconds_count{{{SELECTOR}, model="clothing-model", '
                       f'version_label="{label}", outcome="{outcome}"}}', "values": f"0+{per_minute}x30"}
            for label, outcome, per_minute in (
                ("canary", "ok", 45), ("canary", "model_error", 5), ("stable", "ok", 199), ("stable", "model_error", 1)
            )
        ],
        "alert_rule_test": [
            _alerts("CanaryErrorRateHigh", "20m",
                    {"severity": "ticket", "namespace": NAMESPACE, "job": JOB, "model": "clothing-model"}),
        ],
    },
}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_alerts_fire_on_what_should_fire_them_and_nothing_else(rules: Path, case: str) -> None:
    tests = {"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": [{"interval": "1m", **CASES[case]}]}
    (rules.parent / "tests.yaml").write_text(yaml.safe_dump(tests))
    tested = promtool("test", "rules", "tests.yaml", cwd=rules.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr
