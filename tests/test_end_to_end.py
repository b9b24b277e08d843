"""The whole path with real processes: stand-in, `celery -A taskhub worker --autoscale`,
`python -m bridge`, and a real MQTT client publishing check-ins through Mosquitto.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from rig.processes import BRIDGE_READY, Process, python_module, wait_for
from taskhub.settings import get_settings, load_settings
from tests.conftest import load_checkin, publish_checkins, stored_checkins

pytestmark = pytest.mark.e2e

RESULTS_TIMEOUT = 120


@pytest.fixture
def standin_process(log_dir: Path) -> Iterator[Process]:
    import httpx

    process = Process("standin", python_module("taskhub.cli", "standin"), log_dir, {}).start()
    ports = (get_settings().standin.port, get_settings().standin.venue_port)
    health = [f"http://127.0.0.1:{port}/health" for port in ports]

    def answers() -> bool:
        try:
            return all(httpx.get(url, timeout=1).status_code == 200 for url in health)
        except httpx.TransportError:
            return False

    wait_for(answers, 30, "the stand-in to answer /health")
    yield process
    process.kill()


def _wait_all_stored(client: redis.Redis, tweet_ids: list[str]) -> None:
    wait_for(
        lambda: stored_checkins(client, tweet_ids) == len(tweet_ids),
        RESULTS_TIMEOUT,
        f"{len(tweet_ids)} resolved check-ins (have {stored_checkins(client, tweet_ids)})",
    )


@pytest.mark.usefixtures("standin_process", "worker", "bridge")
def test_every_published_checkin_is_resolved_and_stored(broker_redis: redis.Redis) -> None:
    tweet_ids = publish_checkins(200, id_base=10_000)

    _wait_all_stored(broker_redis, tweet_ids)
    sample = load_checkin(broker_redis, tweet_ids[0])
    assert sample is not None
    assert sample["city"] in {"nyc", "sf", "london", "tokyo", "berlin", "saopaulo"}
    assert broker_redis.llen("checkins") == 0


@pytest.mark.usefixtures("standin_process", "worker")
def test_bridge_killed_mid_stream_loses_nothing(broker_redis: redis.Redis, log_dir: Path) -> None:
    bridge = Process("bridge", python_module("bridge"), log_dir, {}).start()
    bridge.wait_output(BRIDGE_READY, timeout=30, count=2)
    total = 1000
    tweet_ids: list[str] = []
    feed = threading.Thread(
        target=lambda: tweet_ids.extend(publish_checkins(total, id_base=20_000, rate=400))
    )
    feed.start()
    try:
        wait_for(
            lambda: (
                broker_redis.llen("checkins") + _stored_range(broker_redis, 20_000, total)
                >= total // 3
            ),
            30,
            "a third of the stream to reach Redis",
        )
        bridge.kill()
        assert feed.is_alive(), "the feed finished before the kill: not mid-stream"
    finally:
        feed.join(timeout=60)
    assert len(tweet_ids) == total
    bridge.start().wait_output(BRIDGE_READY, timeout=30, count=2)
    try:
        _wait_all_stored(broker_redis, tweet_ids)
    finally:
        assert bridge.terminate() == 0


def _stored_range(client: redis.Redis, id_base: int, count: int) -> int:
    return stored_checkins(client, [str(id_base + n) for n in range(count)])


@pytest.mark.usefixtures("standin_process", "worker")
def test_bridge_sigterm_finishes_in_flight_work_and_exits_zero(
    broker_redis: redis.Redis, log_dir: Path
) -> None:
    bridge = Process("bridge", python_module("bridge"), log_dir, {}).start()
    bridge.wait_output(BRIDGE_READY, timeout=30, count=2)
    tweet_ids = publish_checkins(300, id_base=30_000)

    assert bridge.terminate() == 0
    assert "bridge stopped:" in bridge.output()
    bridge.start().wait_output(BRIDGE_READY, timeout=30, count=2)
    try:
        _wait_all_stored(broker_redis, tweet_ids)
    finally:
        assert bridge.terminate() == 0


@pytest.mark.usefixtures("standin_process", "worker")
def test_replicas_on_a_shared_subscription_split_the_stream_over_mqtt_311(
    broker_redis: redis.Redis, log_dir: Path
) -> None:
    client_id = load_settings().mqtt.client_id
    common = {"TASKHUB_MQTT__PROTOCOL": "3.1.1", "TASKHUB_MQTT__SHARE_GROUP": f"g-{os.getpid()}"}
    replicas = [
        Process(
            f"bridge-{n}",
            python_module("bridge"),
            log_dir,
            {**common, "TASKHUB_MQTT__CLIENT_ID": f"{client_id}-r{n}"},
        ).start()
        for n in (1, 2)
    ]
    try:
        for replica in replicas:
            replica.wait_output(BRIDGE_READY, timeout=30, count=2)
            assert "$share/" in replica.output()
        tweet_ids = publish_checkins(400, id_base=40_000)
        _wait_all_stored(broker_redis, tweet_ids)
    finally:
        codes = [replica.terminate() for replica in replicas]
    assert codes == [0, 0]
    enqueued = [_enqueued_count(replica.output()) for replica in replicas]
    assert sum(enqueued) >= 400
    assert all(count > 0 for count in enqueued), f"one replica took nothing: {enqueued}"


def _enqueued_count(output: str) -> int:
    line = output.rpartition("bridge stopped:")[2].split()
    counts = dict(part.split("=") for part in line if "=" in part)
    return int(counts["landed"]) + int(counts["spooled"])
