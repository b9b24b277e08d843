"""The Prometheus config and alert rules in deploy/prometheus load in promtool, every rule passes
its unit tests, and every rule reads only metrics docs/observability.md promises.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.metric_names import documented_metrics, undocumented

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS / "alerts.yml"
RULE_TESTS = PROMETHEUS / "alerts.test.yml"


def _promtool(*args: str) -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: scripts/system-packages installs it (Debian: prometheus)")
    result = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60, cwd=ROOT)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_prometheus_config_is_valid_and_finds_the_rules() -> None:
    output = _promtool("check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert "1 rule files found" in output


def test_alert_rules_are_valid() -> None:
    _promtool("check", "rules", str(RULES))


def test_alert_rules_pass_their_unit_tests() -> None:
    _promtool("test", "rules", str(RULE_TESTS))


def test_every_alert_rule_has_a_firing_unit_test() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case.get("exp_alerts")
    }
    quiet = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if not case.get("exp_alerts")
    }
    names = {rule["alert"] for rule in _rules()}
    assert names - fired == set(), "rules never shown firing"
    assert names - quiet == set(), "rules never shown staying quiet"


def test_every_alert_has_a_severity_a_summary_and_a_description() -> None:
    for rule in _rules():
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert set(rule["annotations"]) >= {"summary", "description"}, rule["alert"]


def test_alert_rules_read_only_documented_metrics() -> None:
    documented = documented_metrics()
    for rule in _rules():
        assert undocumented(rule["expr"], documented) == set(), rule["alert"]
