"""Above the high watermark the bridge stops reading MQTT; the queue stays bounded while the broker
holds the backlog, and everything is processed once workers catch up.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import redis

from rig.processes import BRIDGE_READY, Process, celery, python_module, wait_for
from rig.servers import MosquittoServer
from taskhub.settings import get_settings
from tests.conftest import publish_checkins, stored_checkins

pytestmark = pytest.mark.e2e

HIGH, LOW, IN_FLIGHT, BATCH = 300, 100, 100, 50
TOTAL = 2000


@pytest.mark.usefixtures("standin")
def test_queue_depth_stays_below_high_watermark_plus_in_flight(
    broker_redis: redis.Redis, log_dir: Path, private_mosquitto: MosquittoServer
) -> None:
    mqtt = get_settings().mqtt.model_copy(update={"port": private_mosquitto.port})
    bridge = Process(
        "bridge",
        python_module("bridge"),
        log_dir,
        {
            "TASKHUB_MQTT__CLIENT_ID": f"{get_settings().mqtt.client_id}-bp",
            "TASKHUB_BRIDGE__HIGH_WATERMARK": str(HIGH),
            "TASKHUB_BRIDGE__LOW_WATERMARK": str(LOW),
            "TASKHUB_BRIDGE__MAX_IN_FLIGHT": str(IN_FLIGHT),
            "TASKHUB_MQTT__RECEIVE_MAXIMUM": str(IN_FLIGHT),
            "TASKHUB_BRIDGE__BATCH_SIZE": str(BATCH),
            "TASKHUB_MQTT__PORT": str(private_mosquitto.port),
        },
    ).start()
    depths: list[int] = []
    sampling = threading.Event()

    def sample() -> None:
        probe = redis.Redis.from_url(get_settings().broker_url.get_secret_value())
        while not sampling.is_set():
            depths.append(int(probe.llen("checkins")))
        probe.close()

    sampler = threading.Thread(target=sample)
    worker: Process | None = None
    try:
        bridge.wait_output(BRIDGE_READY, timeout=30, count=2)
        sampler.start()
        tweet_ids = publish_checkins(TOTAL, id_base=80_000, mqtt=mqtt)
        bridge.wait_output("pausing intake", timeout=30)
        wait_for(lambda: len(depths) > 1000, 30, "depth samples while paused")

        worker = Process(
            "worker",
            celery("worker", "-c", "4", "-l", "INFO", "--without-mingle", "--without-gossip"),
            log_dir,
            {},
        ).start()
        wait_for(
            lambda: stored_checkins(broker_redis, tweet_ids) == TOTAL, 180, "every check-in stored"
        )
    finally:
        sampling.set()
        sampler.join(timeout=10)
        if worker is not None:
            worker.kill()
        bridge.terminate()
    print(f"backpressure: max_depth={max(depths)} high={HIGH} in_flight={IN_FLIGHT}")
    assert max(depths) >= HIGH, "the test never reached the watermark"
    assert max(depths) <= HIGH + IN_FLIGHT
    assert "resuming intake" in bridge.output()


KEEPALIVE = 5
PAUSED_KEEPALIVES = 3


def _paused_bridge(
    log_dir: Path, mosquitto: MosquittoServer, name: str, extra: dict[str, str]
) -> Process:
    return Process(
        "bridge",
        python_module("bridge"),
        log_dir,
        {
            "TASKHUB_MQTT__CLIENT_ID": f"{get_settings().mqtt.client_id}-{name}",
            "TASKHUB_MQTT__KEEPALIVE": str(KEEPALIVE),
            "TASKHUB_BRIDGE__HIGH_WATERMARK": str(HIGH),
            "TASKHUB_BRIDGE__LOW_WATERMARK": str(LOW),
            "TASKHUB_BRIDGE__MAX_IN_FLIGHT": str(IN_FLIGHT),
            "TASKHUB_MQTT__RECEIVE_MAXIMUM": str(IN_FLIGHT),
            "TASKHUB_BRIDGE__BATCH_SIZE": str(BATCH),
            "TASKHUB_MQTT__PORT": str(mosquitto.port),
            **extra,
        },
    ).start()


def _drain_queue_until_all_landed(client: redis.Redis, total: int) -> None:
    """Stand in for a worker: empty the queue until `total` tasks have come through it."""
    seen = 0

    def drained() -> bool:
        nonlocal seen
        with client.pipeline() as pipe:
            pipe.llen("checkins")
            pipe.delete("checkins")
            depth, _ = pipe.execute()
        seen += int(depth)
        return seen >= total

    wait_for(drained, 60, f"{total} tasks through the queue")
    assert seen == total


def test_a_paused_bridge_keeps_its_mqtt_connection(
    broker_redis: redis.Redis, log_dir: Path, private_mosquitto: MosquittoServer
) -> None:
    """While paused the bridge takes no message, yet it keeps reading PINGRESPs: no reconnects."""
    mqtt = get_settings().mqtt.model_copy(update={"port": private_mosquitto.port})
    bridge = _paused_bridge(log_dir, private_mosquitto, "paused", {})
    try:
        bridge.wait_output(BRIDGE_READY, timeout=30, count=2)
        tweet_ids = publish_checkins(HIGH * 3, id_base=90_000, mqtt=mqtt)
        bridge.wait_output("pausing intake", timeout=30)
        # Nothing to await here: the claim is that nothing happens for three keepalive periods.
        time.sleep(PAUSED_KEEPALIVES * KEEPALIVE + 1)
        assert broker_redis.llen("checkins") < len(tweet_ids), "the bridge never paused"
        _drain_queue_until_all_landed(broker_redis, len(tweet_ids))
    finally:
        bridge.terminate()
    log = bridge.output()
    assert "mqtt disconnected" not in log
    assert log.count("mqtt connected") == 1


def test_messages_past_read_ahead_are_fetched_again_by_one_reconnect(
    broker_redis: redis.Redis, log_dir: Path, private_mosquitto: MosquittoServer
) -> None:
    """A paused bridge holds at most read-ahead messages; the rest come back after it resumes."""
    mqtt = get_settings().mqtt.model_copy(update={"port": private_mosquitto.port})
    bridge = _paused_bridge(
        log_dir, private_mosquitto, "read-ahead", {"TASKHUB_MQTT__READ_AHEAD": str(BATCH)}
    )
    try:
        bridge.wait_output(BRIDGE_READY, timeout=30, count=2)
        tweet_ids = publish_checkins(HIGH * 3, id_base=95_000, mqtt=mqtt)
        bridge.wait_output("pausing intake", timeout=30)
        _drain_queue_until_all_landed(broker_redis, len(tweet_ids))
    finally:
        bridge.terminate()
    log = bridge.output()
    assert "so the broker sends again" in log
    assert "mqtt disconnected" not in log
