"""A Redis at maxmemory (noeviction) stops neither the bridge nor the workers: the bridge pauses
before Redis refuses it, and everything lands and runs once memory is freed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from taskhub.settings import get_settings
from tests.conftest import publish_checkins
from tests.support.processes import BRIDGE_READY, Process, python_module, wait_for
from tests.support.servers import MosquittoServer, RedisServer

pytestmark = pytest.mark.e2e

MAXMEMORY = 32 * 1024 * 1024
FILLER_VALUE_BYTES = 10_000
TIMEOUT = 60


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def fill(client: redis.Redis, fraction: float) -> list[str]:
    """Fill Redis with junk up to `fraction` of its maxmemory; returns the junk's keys."""
    keys: list[str] = []
    while used_memory(client) < fraction * MAXMEMORY:
        batch = [f"filler:{len(keys) + n}" for n in range(10)]
        client.mset(dict.fromkeys(batch, b"x" * FILLER_VALUE_BYTES))
        keys += batch
    return keys


@pytest.fixture
def full_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own that refuses writes past MAXMEMORY."""
    server = RedisServer(tmp_path / "redis", maxmemory=MAXMEMORY)
    server.start()
    yield server
    server.stop()


def test_bridge_pauses_before_redis_refuses_and_lands_everything_once_memory_is_freed(
    full_redis: RedisServer, private_mosquitto: MosquittoServer, log_dir: Path
) -> None:
    client = redis.Redis.from_url(full_redis.url)
    filler = fill(client, 0.75)
    ledger = f"{get_settings().key_prefix}:ledger"
    total = 3000  # about 3 KB each in Redis (task and ledger entry): past maxmemory unpaused
    bridge = Process(
        "bridge",
        python_module("bridge"),
        log_dir,
        {
            "TASKHUB_BROKER_URL": full_redis.url,
            "TASKHUB_RESULT_BACKEND": full_redis.url,
            "TASKHUB_MQTT__PORT": str(private_mosquitto.port),
            "TASKHUB_MQTT__CLIENT_ID": f"{get_settings().mqtt.client_id}-full",
            "TASKHUB_BRIDGE__MAX_IN_FLIGHT": "200",
            "TASKHUB_MQTT__RECEIVE_MAXIMUM": "200",
            "TASKHUB_BRIDGE__BATCH_SIZE": "50",
        },
    ).start()
    try:
        bridge.wait_output(BRIDGE_READY, timeout=30, count=2)
        mqtt = get_settings().mqtt.model_copy(update={"port": private_mosquitto.port})
        publish_checkins(total, id_base=950_000, mqtt=mqtt)
        bridge.wait_output("pausing intake", timeout=TIMEOUT)
        paused_at = int(client.zcard(ledger))
        assert paused_at < total
        assert used_memory(client) < MAXMEMORY

        client.delete(*filler)
        wait_for(lambda: client.zcard(ledger) == total, TIMEOUT, "every message in redis")
    finally:
        bridge.terminate()
    print(f"redis full: paused after {paused_at} of {total} messages, none refused")
    assert "resuming intake" in bridge.output()
    assert "refused" not in bridge.output(), "redis refused a write the bridge should have held"
    assert "did not take" not in bridge.output()
    assert client.llen("checkins") == total
