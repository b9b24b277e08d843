"""The bridge rides out Redis outages: it acks nothing Redis does not hold, retries with backoff,
and lands everything once Redis is back.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from taskhub.demo.feed import checkin_tweets, publish
from taskhub.settings import get_settings
from tests.support.processes import BRIDGE_READY, Process, python_module, wait_for
from tests.support.servers import RedisServer

pytestmark = pytest.mark.e2e
TIMEOUT = 60


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


def _publish(count: int, id_base: int) -> None:
    settings = get_settings()
    topic = settings.topic_prefix + "checkins/{city}/tweets"
    messages = checkin_tweets(count, id_base=id_base, topic=topic, seed=id_base)
    assert publish(settings.mqtt, messages, rate=0, total=count, show_progress=False) == count


def test_bridge_holds_acks_while_redis_is_down_and_lands_everything_after(
    private_redis: RedisServer, log_dir: Path
) -> None:
    client_id = f"{get_settings().mqtt.client_id}-outage"
    bridge = Process(
        "bridge",
        python_module("bridge"),
        log_dir,
        {"TASKHUB_BROKER_URL": private_redis.url, "TASKHUB_MQTT__CLIENT_ID": client_id},
    ).start()
    queue = redis.Redis.from_url(private_redis.url)
    try:
        bridge.wait_output(BRIDGE_READY, timeout=30, count=2)
        _publish(50, id_base=60_000)
        wait_for(lambda: queue.llen("checkins") == 50, TIMEOUT, "the first 50 tasks in Redis")

        private_redis.kill()
        _publish(50, id_base=61_000)
        bridge.wait_output("redis did not take a batch", TIMEOUT)
        private_redis.start()

        wait_for(lambda: queue.llen("checkins") == 100, TIMEOUT, "all 100 tasks in Redis")
        bridge.wait_output("spool drained", TIMEOUT)
    finally:
        queue.close()
        exit_code = bridge.terminate()
    assert exit_code == 0
    assert "abandoned=0" in bridge.output()
    assert "spool=0" in bridge.output()
