"""Bridge replicas in Redis: one client id runs once, and a restart after a crash waits only for
the dead bridge's lease to lapse."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest
import redis

from bridge.replicas import HEARTBEAT_SECONDS, LEASE_SECONDS
from rig.processes import BRIDGE_READY, Process, python_module, wait_for
from rig.servers import MosquittoServer
from taskhub.settings import get_settings
from tests.conftest import publish_checkins
from tests.support.queues import queued_tweet_ids

pytestmark = pytest.mark.e2e

WAIT_SECONDS = 30
GROUP_MESSAGES = 20
MID_STREAM_MESSAGES = 3000
MID_STREAM_RATE = 1500.0


def _bridge(log_dir: Path, name: str, client_id: str, **env: str) -> Process:
    return Process(
        name, python_module("bridge"), log_dir, {"TASKHUB_MQTT__CLIENT_ID": client_id, **env}
    )


def test_a_second_bridge_on_the_same_client_id_refuses_to_start_in_one_line(
    broker_redis: redis.Redis, log_dir: Path
) -> None:
    client_id = f"{get_settings().mqtt.client_id}-twin"
    first = _bridge(log_dir, "first", client_id).start()
    second = _bridge(log_dir, "second", client_id)
    try:
        first.wait_output(BRIDGE_READY, timeout=WAIT_SECONDS, count=2)
        second.start()
        assert second.popen is not None
        code = second.popen.wait(timeout=LEASE_SECONDS + WAIT_SECONDS)
        publish_checkins(5, id_base=61_000)
        wait_for(lambda: broker_redis.llen("checkins") == 5, WAIT_SECONDS, "5 tasks via the first")
    finally:
        first.terminate()
        second.kill()
    assert code == 1
    lines = [line for line in second.output().splitlines() if line.startswith("taskhub:")]
    assert len(lines) == 1, second.output()
    assert f"runs as TASKHUB_MQTT__CLIENT_ID={client_id}" in lines[0]
    assert "give each replica its own id" in lines[0]
    assert "Traceback" not in second.output()
    assert first.output().count("mqtt connected") == 1
    assert "mqtt disconnected" not in first.output()


def test_a_bridge_restarted_after_a_crash_waits_only_for_the_lease_to_lapse(
    broker_redis: redis.Redis, log_dir: Path
) -> None:
    client_id = f"{get_settings().mqtt.client_id}-crashed"
    bridge = _bridge(log_dir, "bridge", client_id).start()
    bridge.wait_output(BRIDGE_READY, timeout=WAIT_SECONDS, count=2)
    bridge.kill()
    killed_at = time.monotonic()
    bridge.start()
    try:
        bridge.wait_output(BRIDGE_READY, timeout=WAIT_SECONDS, count=2)
        waited = time.monotonic() - killed_at
        publish_checkins(5, id_base=62_000)
        wait_for(lambda: broker_redis.llen("checkins") == 5, WAIT_SECONDS, "5 tasks")
    finally:
        assert bridge.terminate() == 0
    assert waited >= LEASE_SECONDS - HEARTBEAT_SECONDS, "the dead bridge's lease was not awaited"

    stopped_at = time.monotonic()
    bridge.start()  # a clean stop gave the id back: no wait
    try:
        bridge.wait_output(BRIDGE_READY, timeout=WAIT_SECONDS, count=2)
        assert time.monotonic() - stopped_at < LEASE_SECONDS - HEARTBEAT_SECONDS
    finally:
        bridge.terminate()


def _group_member(
    log_dir: Path,
    name: str,
    mosquitto: MosquittoServer,
    group: str,
    env: dict[str, str] | None = None,
) -> Process:
    return _bridge(
        log_dir,
        name,
        f"{get_settings().mqtt.client_id}-{name}",
        TASKHUB_MQTT__PORT=str(mosquitto.port),
        TASKHUB_MQTT__SHARE_GROUP=group,
        **(env or {}),
    ).start()


def test_a_replica_that_leaves_its_share_group_strands_nothing(
    broker_redis: redis.Redis, log_dir: Path, private_mosquitto: MosquittoServer
) -> None:
    mqtt = get_settings().mqtt.model_copy(update={"port": private_mosquitto.port})
    staying = _group_member(log_dir, "staying", private_mosquitto, "scale")
    leaving = _group_member(log_dir, "leaving", private_mosquitto, "scale")
    try:
        for member in (staying, leaving):
            member.wait_output(BRIDGE_READY, timeout=WAIT_SECONDS, count=2)
        assert leaving.terminate() == 0  # a scale-down: it never comes back
        tweet_ids = set(publish_checkins(GROUP_MESSAGES, id_base=63_000, mqtt=mqtt))
        wait_for(
            lambda: set(queued_tweet_ids(broker_redis)) == tweet_ids,
            WAIT_SECONDS,
            f"all {GROUP_MESSAGES} messages through the replica that stayed",
        )
    finally:
        staying.terminate()
    assert "leaving the share group" in leaving.output()
    assert "leaving the share group" not in staying.output()


def test_a_replica_leaving_mid_stream_delivers_everything_queued_for_it(
    broker_redis: redis.Redis, log_dir: Path, private_mosquitto: MosquittoServer
) -> None:
    """Mosquitto writes a message it gave the leaving replica just before the UNSUBSCRIBE after
    the UNSUBACK; the replica ends its session only once a ping round trip brings nothing more."""
    mqtt = get_settings().mqtt.model_copy(update={"port": private_mosquitto.port})
    staying = _group_member(log_dir, "stays", private_mosquitto, "midstream")
    leaving = _group_member(log_dir, "leaves", private_mosquitto, "midstream")
    published: list[str] = []
    feed = threading.Thread(
        target=lambda: published.extend(
            publish_checkins(MID_STREAM_MESSAGES, id_base=65_000, rate=MID_STREAM_RATE, mqtt=mqtt)
        )
    )
    try:
        for member in (staying, leaving):
            member.wait_output(BRIDGE_READY, timeout=WAIT_SECONDS, count=2)
        feed.start()
        wait_for(lambda: broker_redis.llen("checkins") > 0, WAIT_SECONDS, "the stream flowing")
        assert leaving.terminate() == 0  # while the broker is still giving it every other one
        feed.join(timeout=WAIT_SECONDS)
        wait_for(
            lambda: set(queued_tweet_ids(broker_redis)) == set(published),
            WAIT_SECONDS,
            f"all {MID_STREAM_MESSAGES} messages, some given to the replica that left",
        )
    finally:
        staying.terminate()
        leaving.kill()
    assert "leaving the share group" in leaving.output()


def test_replicas_stopping_together_leave_one_session_that_keeps_the_share(
    broker_redis: redis.Redis, log_dir: Path, private_mosquitto: MosquittoServer
) -> None:
    mqtt = get_settings().mqtt.model_copy(update={"port": private_mosquitto.port})
    members = [_group_member(log_dir, name, private_mosquitto, "all") for name in ("a", "b")]
    for member in members:
        member.wait_output(BRIDGE_READY, timeout=WAIT_SECONDS, count=2)
    for member in members:
        assert member.popen is not None
        member.popen.send_signal(signal.SIGTERM)
    assert [member.popen.wait(timeout=WAIT_SECONDS) for member in members if member.popen] == [0, 0]
    stayed = [member for member in members if "leaving the share group" not in member.output()]
    assert len(stayed) == 1, "exactly one replica keeps the group's session"

    tweet_ids = set(publish_checkins(GROUP_MESSAGES, id_base=64_000, mqtt=mqtt))
    stayed[0].start()
    try:
        wait_for(
            lambda: set(queued_tweet_ids(broker_redis)) == tweet_ids,
            WAIT_SECONDS,
            f"all {GROUP_MESSAGES} messages, queued for the session that stayed",
        )
    finally:
        stayed[0].terminate()
