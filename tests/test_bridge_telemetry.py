"""What the bridge shows about itself: `/metrics` (its own counts and the queues in Redis),
`/healthz`, `/readyz` following the MQTT connection, its beat in Redis, and dead letters counted by
reason and logged within a rate limit however many arrive.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from bridge.metrics import BulkHistogram
from bridge.publish_time import from_payload, from_properties, from_raw_properties
from bridge.state import BridgeState
from rig.isolation import free_port
from rig.processes import BRIDGE_READY, Process, python_module, wait_for
from rig.servers import MosquittoServer
from taskhub.deadletters import DeadLetterStream
from taskhub.demo.feed import publish
from taskhub.intake import RawMessage
from taskhub.settings import get_settings
from taskhub.telemetry.beats import bridge_beats
from taskhub.telemetry.deadletter_log import RateLimitedLog
from taskhub.telemetry.probes import Verdict
from tests.conftest import checkin_tweet, publish_checkins

TIMEOUT = 30
CHECKINS = 40
FLOOD = 300


class ProbedBridge:
    """`python -m bridge` on a private Mosquitto, its probe server on a free port."""

    def __init__(self, mosquitto: MosquittoServer, log_dir: Path) -> None:
        self.port = free_port()
        self.client_id = f"{get_settings().mqtt.client_id}-probed-{uuid.uuid4().hex[:6]}"
        self.mqtt = get_settings().mqtt.model_copy(update={"port": mosquitto.port})
        env = {
            "TASKHUB_MQTT__PORT": str(mosquitto.port),
            "TASKHUB_MQTT__CLIENT_ID": self.client_id,
            "TASKHUB_MQTT__RECONNECT_MAX_DELAY": "1",
            "TASKHUB_TELEMETRY__BRIDGE_PORT": str(self.port),
            "TASKHUB_TELEMETRY__BEAT_INTERVAL": "0.5",
        }
        self.process = Process("bridge", python_module("bridge"), log_dir, env)

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=5)

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample on /metrics by (name, sorted labels)."""
        found = {}
        for family in text_string_to_metric_families(self.get("/metrics").text):
            for sample in family.samples:
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return found

    def metric(self, name: str, **labels: str) -> float:
        return self.samples().get((name, tuple(sorted(labels.items()))), 0.0)

    def wait_metric(self, name: str, value: float, **labels: str) -> None:
        wait_for(
            lambda: self.metric(name, **labels) == value,
            TIMEOUT,
            f"{name}{labels} == {value} (is {self.metric(name, **labels)})",
        )


@pytest.fixture
def probed(private_mosquitto: MosquittoServer, log_dir: Path) -> Iterator[ProbedBridge]:
    bridge = ProbedBridge(private_mosquitto, log_dir)
    bridge.process.start().wait_output(BRIDGE_READY, timeout=TIMEOUT, count=2)
    try:
        yield bridge
    finally:
        bridge.process.kill()


def _checkins_topic() -> str:
    return get_settings().topic_prefix + "checkins/nyc/tweets"


@pytest.mark.e2e
def test_metrics_show_received_landed_and_the_queue_and_the_beat_is_in_redis(
    probed: ProbedBridge, broker_redis: redis.Redis
) -> None:
    publish_checkins(CHECKINS, id_base=950_000, mqtt=probed.mqtt)
    stamped = RawMessage(
        _checkins_topic(),
        json.dumps({**checkin_tweet("950999", "abcd123"), "sent_at": time.time()}).encode(),
        {},
    )
    assert publish(probed.mqtt, [stamped], rate=0, total=1, show_progress=False) == 1
    total = CHECKINS + 1

    probed.wait_metric("taskhub_bridge_landed_total", total)
    assert probed.metric("taskhub_bridge_received_total") == total
    assert probed.metric("celery_queue_length", queue_name="checkins") == total  # no worker runs
    assert probed.metric("taskhub_queue_oldest_age_seconds", queue_name="checkins") > 0
    assert probed.metric("taskhub_bridge_landing_seconds_count") == total
    assert probed.metric("taskhub_bridge_publish_to_landed_seconds_count") == 1
    assert probed.metric("taskhub_bridge_batch_size_sum") == total
    assert probed.metric("taskhub_bridge_mqtt_connected") == 1
    assert probed.metric("taskhub_bridge_ready") == 1
    assert probed.metric("taskhub_bridge_paused", reason="queues_full") == 0
    assert probed.get("/healthz").status_code == 200
    assert probed.get("/readyz").status_code == 200

    prefix = get_settings().key_prefix
    wait_for(lambda: len(bridge_beats(broker_redis, prefix)) == 1, TIMEOUT, "the bridge's beat")
    (beat,) = bridge_beats(broker_redis, prefix)
    assert (beat.client_id, beat.connected, beat.subscribed) == (probed.client_id, True, True)
    assert beat.paused is None

    assert probed.process.terminate() == 0
    assert bridge_beats(broker_redis, prefix) == []  # a clean exit leaves the list at once


@pytest.mark.e2e
def test_readyz_answers_503_while_mqtt_is_gone_and_200_once_it_is_back(
    probed: ProbedBridge, private_mosquitto: MosquittoServer, broker_redis: redis.Redis
) -> None:
    assert probed.get("/readyz").status_code == 200

    private_mosquitto.stop()
    wait_for(lambda: probed.get("/readyz").status_code == 503, TIMEOUT, "/readyz to answer 503")
    assert probed.get("/readyz").text == "mqtt is not connected\n"
    assert probed.metric("taskhub_bridge_mqtt_connected") == 0
    assert probed.metric("taskhub_bridge_ready") == 0
    assert probed.get("/healthz").status_code == 200  # the loop turns on: not a reason to restart

    private_mosquitto.start()
    wait_for(lambda: probed.get("/readyz").status_code == 200, TIMEOUT, "/readyz to answer 200")
    assert probed.metric("taskhub_bridge_ready") == 1


_SUMMARY = re.compile(r"(\d+) more dead letters not logged in the last 10 s")


@pytest.mark.e2e
def test_a_flood_of_invalid_payloads_is_counted_by_reason_and_logged_within_the_limit(
    probed: ProbedBridge, broker_redis: redis.Redis
) -> None:
    flood = [RawMessage(_checkins_topic(), b"not json %d" % n, {}) for n in range(FLOOD)]
    assert publish(probed.mqtt, flood, rate=0, total=FLOOD, show_progress=False) == FLOOD

    probed.wait_metric("taskhub_bridge_deadlettered_total", FLOOD, reason="invalid_json")
    assert probed.metric("taskhub_deadletters_total", reason="invalid_json") == FLOOD
    assert probed.metric("taskhub_bridge_landed_total") == 0
    wait_for(
        lambda: _SUMMARY.search(probed.process.output()) is not None,
        TIMEOUT,
        "the line summing up the dead letters not logged",
    )
    output = probed.process.output()
    logged = [line for line in output.splitlines() if "WARNING taskhub.deadletters: dead-" in line]
    not_logged = sum(int(count) for count in _SUMMARY.findall(output))
    assert 1 <= len(logged) <= 20, logged  # at most 10 per 10 s, and the flood took less than 20
    assert len(logged) + not_logged == FLOOD
    assert "invalid_json" in logged[0]
    assert _checkins_topic() in logged[0]
    entry_id = re.search(r" entry (\d+-\d+): ", logged[0])
    assert entry_id is not None, logged[0]  # the id `taskhub deadletter show` takes
    letter = DeadLetterStream(broker_redis, get_settings().key_prefix).get(entry_id.group(1))
    assert letter is not None
    assert letter.reason.value == "invalid_json"


def test_the_rate_limited_log_sums_up_what_it_left_out() -> None:
    now = [0.0]
    lines: list[str] = []

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger(f"test.rate_limited.{uuid.uuid4().hex}")
    logger.addHandler(Recorder())
    logger.propagate = False
    logger.setLevel(logging.WARNING)  # an embedded worker earlier may have raised the root level
    limited = RateLimitedLog(logger, limit=2, window=10, clock=lambda: now[0])
    for n in range(5):
        limited.warning("letter %d", n)
    limited.flush()
    assert lines == ["letter 0", "letter 1"]
    now[0] = 10.0
    limited.flush()
    assert lines[-1] == "3 more dead letters not logged in the last 10 s"
    limited.warning("letter %d", 9)
    assert lines[-1] == "letter 9"
    assert len(lines) == 4


def test_a_bulk_histogram_counts_each_observation_in_its_buckets() -> None:
    histogram = BulkHistogram("h", "h", (0.1, 1.0))
    histogram.observe(0.1, 3)  # on a bound: counted under it (le)
    histogram.observe(0.5)
    histogram.observe(7.0, 2)
    family = histogram.family()
    values = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert values[("h_bucket", "0.1")] == 3
    assert values[("h_bucket", "1.0")] == 4
    assert values[("h_bucket", "+Inf")] == 6
    assert values[("h_count", None)] == 6
    assert values[("h_sum", None)] == pytest.approx(14.8)


def test_a_publish_time_is_read_from_the_user_property_or_the_payload() -> None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    properties = Properties(PacketTypes.PUBLISH)
    properties.UserProperty = ("sent_at", "1700000000.5")
    assert from_raw_properties(properties.pack()) == 1700000000.5
    assert from_raw_properties(b"\x00") is None
    assert from_properties({"UserProperty": [("sent_at", "soon")]}) is None
    assert from_payload({"sent_at": 1700000000}) == 1700000000.0
    assert from_payload({"sent_at": True}) is None
    assert from_payload({"sent_at": "nan"}) is None
    assert from_payload([1, 2]) is None


def _state(**changes: object) -> BridgeState:
    ready = BridgeState(
        connected=True,
        subscribed=True,
        subscribe_refused=(),
        in_flight=0,
        held=0,
        paused=(),
        spool_depth=0,
        redis_fault=None,
        spool_fault=None,
        leaving=False,
        stopping=False,
        loop_age=0.1,
    )
    return dataclasses.replace(ready, **changes)  # type: ignore[arg-type]


def test_readiness_names_the_first_reason_it_is_not_ready() -> None:
    assert _state().ready() == Verdict(True)
    assert _state(subscribed=False).ready().why == "mqtt is connected but not yet subscribed"
    assert _state(held=100).ready().why == (
        "100 messages held: neither redis nor the spool took them"
    )
    assert _state(redis_fault="redis is unreachable: refused").ready().ok  # the spool takes it
    both = _state(redis_fault="redis is unreachable: refused", spool_fault="the spool is full (9)")
    assert both.ready().why == "redis is unreachable: refused, and the spool is full (9)"
    assert not _state(stopping=True).ready().ok
    assert _state(loop_age=11).healthy().why == "the bridge loop has not turned for 11s"
