"""The bridge rides out Redis outages: it acks nothing Redis does not hold, retries with backoff,
and lands everything once Redis is back.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from rig.processes import BRIDGE_READY, Process, python_module, wait_for
from rig.servers import RedisServer
from taskhub.settings import get_settings
from tests.conftest import publish_checkins

pytestmark = pytest.mark.e2e
TIMEOUT = 60


def _bridge_on(server: RedisServer, log_dir: Path, client_id: str, **env: str) -> Process:
    """A started bridge writing to `server`, under its own client id (and so its own spool)."""
    settings = {"TASKHUB_BROKER_URL": server.url, "TASKHUB_MQTT__CLIENT_ID": client_id, **env}
    return Process("bridge", python_module("bridge"), log_dir, settings).start()


def test_bridge_holds_acks_while_redis_is_down_and_lands_everything_after(
    private_redis: RedisServer, log_dir: Path
) -> None:
    client_id = f"{get_settings().mqtt.client_id}-outage"
    bridge = _bridge_on(private_redis, log_dir, client_id)
    queue = redis.Redis.from_url(private_redis.url)
    try:
        bridge.wait_output(BRIDGE_READY, timeout=30, count=2)
        publish_checkins(50, id_base=60_000)
        wait_for(lambda: queue.llen("checkins") == 50, TIMEOUT, "the first 50 tasks in Redis")

        private_redis.kill()
        publish_checkins(50, id_base=61_000)
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


REDIS_OUTAGE_SECONDS = 30.0
"""The scenario's length, not a wait for an event: Redis stays down this long."""


def _spooled(spool: Path) -> int:
    import sqlite3

    if not spool.exists():
        return 0
    with sqlite3.connect(f"file:{spool}?mode=ro", uri=True) as db:
        return int(db.execute("SELECT COUNT(*) FROM spool").fetchone()[0])


def _task_ids(queue: redis.Redis) -> list[str]:
    import json

    return [json.loads(raw)["headers"]["id"] for raw in queue.lrange("checkins", 0, -1)]


def test_redis_down_for_30s_messages_are_spooled_acked_and_drained(
    private_redis: RedisServer, log_dir: Path
) -> None:
    import threading
    import time

    settings = get_settings()
    client_id = f"{settings.mqtt.client_id}-spool"
    spool = settings.bridge.spool_path(client_id)
    receive_maximum = 100
    # The broker may send at most this many unacked: spooling more proves the acks.
    bridge = _bridge_on(
        private_redis,
        log_dir,
        client_id,
        TASKHUB_MQTT__RECEIVE_MAXIMUM=str(receive_maximum),
        TASKHUB_BRIDGE__MAX_IN_FLIGHT=str(receive_maximum),
    )
    queue = redis.Redis.from_url(private_redis.url)
    total, rate = 4000, 100.0
    feed = threading.Thread(target=publish_checkins, args=(total, 70_000, rate))
    try:
        bridge.wait_output(BRIDGE_READY, timeout=30, count=2)
        feed.start()
        wait_for(lambda: queue.llen("checkins") >= 200, TIMEOUT, "tasks landing before the outage")
        private_redis.kill()
        down_at = time.monotonic()
        bridge.wait_output("spooling to", TIMEOUT)
        time.sleep(max(0.0, REDIS_OUTAGE_SECONDS - (time.monotonic() - down_at)))
        spooled_during_outage = _spooled(spool)
        private_redis.start()
        feed.join(timeout=120)
        assert not feed.is_alive()

        wait_for(lambda: len(set(_task_ids(queue))) == total, TIMEOUT, f"all {total} tasks")
        wait_for(lambda: _spooled(spool) == 0, TIMEOUT, "the spool to drain")
    finally:
        queue.close()
        exit_code = bridge.terminate()
    print(
        f"outage: spooled_during_outage={spooled_during_outage} receive_maximum={receive_maximum}"
    )
    assert spooled_during_outage > 2 * receive_maximum, "messages were spooled and acked"
    assert exit_code == 0
    assert "spool drained" in bridge.output()
    assert "spool=0" in bridge.output()


def test_a_full_spool_stops_the_acks_and_the_broker_keeps_the_rest(
    private_redis: RedisServer, log_dir: Path
) -> None:
    settings = get_settings()
    client_id = f"{settings.mqtt.client_id}-full"
    spool = settings.bridge.spool_path(client_id)
    spool_max, total = 50, 300
    bridge = _bridge_on(
        private_redis,
        log_dir,
        client_id,
        TASKHUB_BRIDGE__SPOOL_MAX=str(spool_max),
        TASKHUB_BRIDGE__BATCH_SIZE="10",
    )
    queue = redis.Redis.from_url(private_redis.url)
    try:
        bridge.wait_output(BRIDGE_READY, timeout=30, count=2)
        private_redis.kill()
        publish_checkins(total, id_base=75_000)
        bridge.wait_output("the spool is full", TIMEOUT)
        assert _spooled(spool) <= spool_max

        private_redis.start()
        wait_for(lambda: len(set(_task_ids(queue))) == total, TIMEOUT, f"all {total} tasks")
        wait_for(lambda: _spooled(spool) == 0, TIMEOUT, "the spool to drain")
    finally:
        queue.close()
        exit_code = bridge.terminate()
    assert exit_code == 0


SPOOL_FILE_LIMIT_BYTES = 96 * 1024
"""A file-size limit (RLIMIT_FSIZE) on the bridge: its spool's writes fail as on a full disk."""


def test_a_spool_the_disk_refuses_holds_messages_unacked_and_loses_none(
    private_redis: RedisServer, log_dir: Path
) -> None:
    client_id = f"{get_settings().mqtt.client_id}-diskfull"
    total = 300
    bridge = Process(
        "bridge",
        ["prlimit", f"--fsize={SPOOL_FILE_LIMIT_BYTES}", *python_module("bridge")],
        log_dir,
        {
            "TASKHUB_BROKER_URL": private_redis.url,
            "TASKHUB_MQTT__CLIENT_ID": client_id,
            "TASKHUB_BRIDGE__BATCH_SIZE": "10",
        },
    ).start()
    queue = redis.Redis.from_url(private_redis.url)
    try:
        bridge.wait_output(BRIDGE_READY, timeout=30, count=2)
        private_redis.kill()
        publish_checkins(total, id_base=77_000)
        bridge.wait_output("the spool cannot be written", TIMEOUT)
        assert bridge.popen is not None
        assert bridge.popen.poll() is None, "the bridge died"

        private_redis.start()
        wait_for(lambda: len(set(_task_ids(queue))) == total, TIMEOUT, f"all {total} tasks")
    finally:
        queue.close()
        exit_code = bridge.terminate()
    assert exit_code == 0
    assert "Traceback" not in bridge.output()
