"""A real Prometheus, on the repo's config and rules, scrapes a real bridge and a real worker:
both targets are up and the bridge's queue figures arrive for every route queue.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path

import pytest
import redis
import yaml

from rig.isolation import free_port
from rig.processes import (
    BRIDGE_READY,
    Process,
    python_module,
    start_worker,
    wait_for,
)
from taskhub.routes import route_table
from tests.support.prometheus import PrometheusServer, config_scraping

pytestmark = pytest.mark.e2e

RULES = Path(__file__).resolve().parent.parent / "deploy" / "prometheus" / "alerts.yml"
SCRAPED_WITHIN = 20.0
"""Seconds for a 1 s scrape interval to bring in a target's first samples, with room."""


@pytest.fixture
def probed_bridge(log_dir: Path, broker_redis: redis.Redis) -> Iterator[tuple[Process, int]]:
    """`python -m bridge` serving its probes on a free port, in an MQTT session of its own."""
    port = free_port()
    client_id = f"{os.environ['TASKHUB_MQTT__CLIENT_ID']}-{uuid.uuid4().hex[:8]}"
    env = {"TASKHUB_MQTT__CLIENT_ID": client_id, "TASKHUB_TELEMETRY__BRIDGE_PORT": str(port)}
    process = Process("bridge", python_module("bridge"), log_dir, env).start()
    try:
        process.wait_output(BRIDGE_READY, timeout=30, count=2)
        yield process, port
    finally:
        process.kill()


@pytest.fixture
def probed_worker(log_dir: Path, broker_redis: redis.Redis) -> Iterator[tuple[Process, int]]:
    """`celery -A taskhub worker` serving its probes on a free port."""
    port = free_port()
    process = start_worker("worker", log_dir, {"TASKHUB_TELEMETRY__WORKER_PORT": str(port)})
    try:
        yield process, port
    finally:
        process.kill()


def test_prometheus_scrapes_queue_lengths_from_the_bridge_and_both_targets_are_up(
    tmp_path: Path,
    probed_bridge: tuple[Process, int],
    probed_worker: tuple[Process, int],
) -> None:
    targets = {
        "taskhub-bridge": [f"127.0.0.1:{probed_bridge[1]}"],
        "taskhub-worker": [f"127.0.0.1:{probed_worker[1]}"],
    }
    prometheus = PrometheusServer(tmp_path / "prometheus", config_scraping(targets, [RULES]))
    prometheus.start()
    try:
        _wait_for_values(prometheus, "up", "job", {job: 1.0 for job in targets})
        queues = set(route_table().queues)
        assert queues >= {"checkins", "sensors"}
        _wait_for_values(prometheus, "celery_queue_length", "queue_name", queues)
        served = {
            rule["name"] for group in prometheus.api("rules")["groups"] for rule in group["rules"]
        }
        deployed = yaml.safe_load(RULES.read_text())["groups"]
        assert served == {rule["alert"] for group in deployed for rule in group["rules"]}
    finally:
        prometheus.stop()


def _wait_for_values(
    prometheus: PrometheusServer, promql: str, label: str, expected: Collection[object]
) -> None:
    """Wait until `promql`'s values by `label` are `expected` (a mapping), or its samples carry
    exactly those label values (a set); fail showing what Prometheus last had."""
    last: dict[str, float] = {}

    def arrived() -> bool:
        nonlocal last
        last = prometheus.values_by(promql, label)
        return (last if isinstance(expected, Mapping) else set(last)) == expected

    try:
        wait_for(arrived, SCRAPED_WITHIN, f"{promql} by {label}")
    except TimeoutError as error:
        raise AssertionError(f"{error}: expected {expected}, Prometheus has {last}") from None
