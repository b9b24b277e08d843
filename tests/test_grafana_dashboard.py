"""The Grafana dashboard parses, uses the provisioned Prometheus data source, shows every figure
an operator needs, and its queries are valid PromQL reading only documented metrics.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.metric_names import documented_metrics, metrics_in, undocumented

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "taskhub.json"
SHOWN = {
    "celery_queue_length",
    "taskhub_queue_unacked",
    "taskhub_queue_oldest_age_seconds",
    "celery_active_consumer_count",
    "taskhub_bridge_received_total",
    "taskhub_bridge_landed_total",
    "taskhub_bridge_in_flight",
    "taskhub_bridge_paused",
    "taskhub_bridge_spool_depth",
    "taskhub_bridge_landing_seconds_bucket",
    "celery_task_succeeded_total",
    "celery_task_failed_total",
    "celery_task_runtime_bucket",
    "taskhub_task_queue_wait_seconds_bucket",
    "taskhub_upstream_requests_total",
    "taskhub_upstream_throttled_total",
    "taskhub_upstream_breaker_open",
    "taskhub_deadletters_total",
    "taskhub_worker_pool_size",
    "taskhub_redis_memory_used_bytes",
}
"""What the dashboard must show (issue 12): queues, bridge, task outcomes and times, upstream,
dead letters, pools, Redis memory."""
GRAFANA_VARIABLE = re.compile(r"\$__\w+|\$\{__\w+\}")
SOME_RANGE = "1m"


def _dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def _panels() -> list[dict[str, Any]]:
    panels = _dashboard()["panels"]
    nested = [inner for panel in panels for inner in panel.get("panels", [])]
    return [panel for panel in panels + nested if panel["type"] != "row"]


def _expressions() -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in _panels() for target in panel["targets"]]


def test_dashboard_parses_with_unique_panel_ids() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "taskhub"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_dashboard_queries_the_provisioned_data_source() -> None:
    provisioned = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    uid = provisioned["datasources"][0]["uid"]
    for panel in _panels():
        assert panel["datasource"]["uid"] == uid, panel["title"]
        assert all(target["datasource"]["uid"] == uid for target in panel["targets"])


def test_dashboard_provider_loads_the_directory_compose_mounts() -> None:
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/taskhub.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    grafana = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["grafana"]
    assert f"./deploy/grafana/dashboards:{path}:ro" in grafana["volumes"]


def test_dashboard_shows_every_figure_an_operator_needs() -> None:
    shown = set().union(*(metrics_in(expr) for _, expr in _expressions()))
    assert SHOWN - shown == set()


def test_dashboard_reads_only_documented_metrics() -> None:
    documented = documented_metrics()
    for title, expr in _expressions():
        assert undocumented(expr, documented) == set(), title


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query as a recording rule's expression, Grafana's range variables
    replaced by a fixed range."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: scripts/system-packages installs it (Debian: prometheus)")
    rules = [
        {"record": f"taskhub:panel_query:{n}", "expr": GRAFANA_VARIABLE.sub(SOME_RANGE, expr)}
        for n, (_, expr) in enumerate(_expressions())
    ]
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
