"""`taskhub feed` rides out broker outages: it waits for the reconnect, sends again what the broker
had not acknowledged, says so on stderr, and sums up what it published when it ends or is stopped.
"""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import redis

from rig.processes import BRIDGE_READY, Process, python_module, wait_for
from rig.servers import MosquittoServer
from taskhub.mqtt import connect_arguments, new_client
from taskhub.settings import MqttSettings, get_settings

pytestmark = pytest.mark.e2e

COUNT = 200
RATE = 40
"""Five seconds of feed: long enough to stop the broker in the middle of it."""
OUTAGE_SECONDS = 3.0
"""How long the broker stays down: the length of the outage under test, not a synchronisation."""
TIMEOUT = 60
STOP_SECONDS = 5.0
"""How soon a stopped feed must have exited: honcho sends SIGKILL 5 s after SIGTERM."""
RETRY_EVERY = "1"
"""Seconds between the feed's reconnect attempts (TASKHUB_MQTT__RECONNECT_MAX_DELAY), so the
test does not wait out paho's backoff, which doubles up to 30 s by default."""
SUMMARY = re.compile(r"feed: published=(\d+) unacknowledged=(\d+)")
ID_BASE = 7_000_000


class TweetWatcher:
    """A QoS 1 subscriber in a persistent session on the feed's topics: the distinct tweet ids
    that reached it, across broker restarts."""

    def __init__(self, broker: MosquittoServer, topic_filter: str) -> None:
        self.ids: set[str] = set()
        self._topic_filter = topic_filter
        self._settings = MqttSettings(port=broker.port, reconnect_max_delay=1)
        self._client = new_client(self._settings, "feed-watcher", persistent=True)
        self._subscribed = threading.Event()
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *args: self._subscribed.set()
        self._client.on_message = self._on_message

    def _on_connect(self, client: mqtt.Client, *args: Any) -> None:
        client.subscribe(self._topic_filter, qos=1)  # again on every connect, as the bridge does

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.ids.add(json.loads(message.payload)["id"])

    @contextmanager
    def watching(self) -> Iterator[TweetWatcher]:
        self._client.connect(**connect_arguments(self._settings, persistent=True))
        self._client.loop_start()
        try:
            if not self._subscribed.wait(TIMEOUT):
                raise TimeoutError(f"no SUBACK for {self._topic_filter}")
            yield self
        finally:
            self._client.disconnect()
            self._client.loop_stop()

    def wait_for_count(self, count: int) -> None:
        wait_for(lambda: len(self.ids) >= count, TIMEOUT, f"{count} distinct tweets")


def _feed(broker: MosquittoServer, log_dir: Path, *args: str) -> Process:
    argv = python_module("taskhub.cli", "feed", "--quiet", "--id-base", str(ID_BASE), *args)
    env = {"TASKHUB_MQTT__PORT": str(broker.port), "TASKHUB_MQTT__RECONNECT_MAX_DELAY": RETRY_EVERY}
    return Process("feed", argv, log_dir, env).start()


def _exit_code(feed: Process, timeout: float) -> int:
    assert feed.popen is not None
    return feed.popen.wait(timeout=timeout)


def _summary(feed: Process) -> tuple[int, int]:
    found = SUMMARY.search(feed.output())
    assert found is not None, f"no summary line in:\n{feed.output()[-2000:]}"
    return int(found.group(1)), int(found.group(2))


def _task_ids(queue: redis.Redis) -> set[str]:
    """The distinct task ids waiting in the check-in queue."""
    return {json.loads(raw)["headers"]["id"] for raw in queue.lrange("checkins", 0, -1)}


@pytest.fixture
def watcher(private_mosquitto: MosquittoServer, topic_prefix: str) -> Iterator[TweetWatcher]:
    watcher = TweetWatcher(private_mosquitto, f"{topic_prefix}checkins/+/tweets")
    with watcher.watching():
        # On disk, the subscription outlives even a SIGKILL, ready for what the feed resends.
        private_mosquitto.save_database()
        yield watcher


@pytest.mark.parametrize("how", ["stopped", "killed"])
def test_feed_rides_out_a_broker_restart_and_every_tweet_arrives(
    how: str, private_mosquitto: MosquittoServer, watcher: TweetWatcher, log_dir: Path
) -> None:
    feed = _feed(private_mosquitto, log_dir, "--count", str(COUNT), "--rate", str(RATE))
    try:
        watcher.wait_for_count(COUNT // 3)
        if how == "stopped":
            private_mosquitto.stop()
        else:
            # The watcher is online and takes each message as the broker takes it, so the kill
            # finds nothing queued for it; what the broker had not acknowledged, the feed resends.
            private_mosquitto.kill()
        feed.wait_output("broker unreachable", TIMEOUT)
        time.sleep(OUTAGE_SECONDS)
        private_mosquitto.start()
        code = _exit_code(feed, TIMEOUT)
    finally:
        feed.kill()
    output = feed.output()
    assert code == 0, output[-2000:]
    assert _summary(feed) == (COUNT, 0)
    assert re.search(r"feed: reconnected after \d+\.\ds; \d+ messages? resent", output), output
    watcher.wait_for_count(COUNT)
    assert watcher.ids == {str(ID_BASE + n) for n in range(COUNT)}


def test_the_demo_keeps_going_across_a_mosquitto_restart(
    private_mosquitto: MosquittoServer, broker_redis: redis.Redis, log_dir: Path
) -> None:
    """The feed and the bridge, as honcho runs them, both ride out the restart, and every check-in
    becomes a task. A message the feed sends again may make a second task with the same id (the
    tweet id's), which the worker absorbs as a duplicate (docs/delivery.md, hop 4)."""
    bridge_env = {
        "TASKHUB_MQTT__PORT": str(private_mosquitto.port),
        "TASKHUB_MQTT__CLIENT_ID": f"{get_settings().mqtt.client_id}-feed-outage",
        "TASKHUB_MQTT__RECONNECT_MAX_DELAY": RETRY_EVERY,
    }
    bridge = Process("bridge", python_module("bridge"), log_dir, bridge_env).start()
    feed: Process | None = None
    try:
        bridge.wait_output(BRIDGE_READY, timeout=TIMEOUT, count=2)
        feed = _feed(private_mosquitto, log_dir, "--count", str(COUNT), "--rate", str(RATE))
        wait_for(lambda: len(_task_ids(broker_redis)) >= COUNT // 3, TIMEOUT, "a third landed")
        private_mosquitto.stop()
        feed.wait_output("broker unreachable", TIMEOUT)
        time.sleep(OUTAGE_SECONDS)
        private_mosquitto.start()
        assert _exit_code(feed, TIMEOUT) == 0, feed.output()[-2000:]
        wait_for(lambda: len(_task_ids(broker_redis)) >= COUNT, TIMEOUT, "every check-in landed")
        assert bridge.popen is not None
        assert bridge.popen.poll() is None, "the bridge died"
    finally:
        bridge.kill()
        if feed is not None:
            feed.kill()
    assert _summary(feed) == (COUNT, 0)
    assert len(_task_ids(broker_redis)) == COUNT


def test_feed_started_before_the_broker_waits_for_it(
    tmp_path: Path, topic_prefix: str, log_dir: Path
) -> None:
    broker = MosquittoServer(tmp_path / "mosquitto")
    feed = _feed(broker, log_dir, "--count", "20", "--rate", "0")
    try:
        feed.wait_output("broker unreachable", TIMEOUT)
        broker.start()
        code = _exit_code(feed, TIMEOUT)
    finally:
        feed.kill()
        broker.stop()
    assert code == 0, feed.output()[-2000:]
    assert _summary(feed) == (20, 0)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stopped_feed_sums_up_and_exits_at_once(
    stop: signal.Signals, private_mosquitto: MosquittoServer, watcher: TweetWatcher, log_dir: Path
) -> None:
    feed = _feed(private_mosquitto, log_dir, "--count", "0", "--rate", str(RATE))
    try:
        watcher.wait_for_count(10)
        assert feed.popen is not None
        feed.popen.send_signal(stop)
        code = _exit_code(feed, STOP_SECONDS)
    finally:
        feed.kill()
    assert code == 0, feed.output()[-2000:]
    published, unacknowledged = _summary(feed)
    assert published >= len(watcher.ids) >= 10
    assert unacknowledged == 0  # the broker was up: the feed waited for the last PUBACKs


def test_a_feed_stopped_during_an_outage_says_what_it_could_not_publish(
    private_mosquitto: MosquittoServer, watcher: TweetWatcher, log_dir: Path
) -> None:
    feed = _feed(private_mosquitto, log_dir, "--count", "0", "--rate", str(RATE))
    try:
        watcher.wait_for_count(10)
        private_mosquitto.stop()
        feed.wait_output("broker unreachable", TIMEOUT)
        code = feed.terminate(timeout=STOP_SECONDS)
    finally:
        feed.kill()
    assert code == 0, feed.output()[-2000:]
    published, _ = _summary(feed)
    assert published >= len(watcher.ids) >= 10


def test_a_feed_stopped_while_the_broker_hangs_counts_what_was_never_acknowledged(
    private_mosquitto: MosquittoServer, watcher: TweetWatcher, log_dir: Path
) -> None:
    feed = _feed(private_mosquitto, log_dir, "--count", "0", "--rate", str(RATE))
    assert private_mosquitto.popen is not None
    try:
        watcher.wait_for_count(10)
        private_mosquitto.popen.send_signal(signal.SIGSTOP)  # connected, but no PUBACK comes
        seen = len(watcher.ids)
        time.sleep(1.0)  # the feed keeps sending into the hung connection meanwhile
        started = time.monotonic()
        code = feed.terminate(timeout=STOP_SECONDS)
        stopped_in = time.monotonic() - started
    finally:
        private_mosquitto.popen.send_signal(signal.SIGCONT)
        feed.kill()
    assert code == 0, feed.output()[-2000:]
    published, unacknowledged = _summary(feed)
    assert published >= seen
    assert unacknowledged > 0
    print(f"stopped in {stopped_in:.1f}s: published={published} unacknowledged={unacknowledged}")
