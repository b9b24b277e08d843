"""Above the high watermark the bridge stops reading MQTT; the queue stays bounded while the broker
holds the backlog, and everything is processed once workers catch up.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import redis

from taskhub.settings import get_settings
from tests.conftest import publish_checkins, stored_checkins
from tests.support.processes import BRIDGE_READY, Process, celery, python_module, wait_for
from tests.support.servers import MosquittoServer

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
