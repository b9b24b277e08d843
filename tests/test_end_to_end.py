"""The whole path with real processes: stand-in, `celery -A taskhub worker --autoscale`,
`python -m bridge`, and a real MQTT client publishing check-ins through Mosquitto.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis

from rig.processes import BRIDGE_READY, Process, python_module, start_worker, wait_for
from taskhub.settings import get_settings, load_settings
from tests.conftest import load_checkin, publish_checkins, stored_checkins

if TYPE_CHECKING:
    from taskhub.requests import Response

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


REQUEST_TOPIC = "checkins/nyc/tweets"
REQUEST_TIMEOUT = 120.0
"""The requester waits through a bridge's death, a worker's start and the bridge's restart."""
REPLY_AFTER_RESTART = 15.0
"""Seconds a restarted bridge may take to publish a reply its dead self left: well below the
30 s after which a live replica claims another's unsettled entries (bridge/replies.py)."""


class _Requester(threading.Thread):
    """`taskhub.request` in a thread: subscribed before the test kills anything, it waits."""

    def __init__(self, tweet: dict[str, object]) -> None:
        super().__init__(daemon=True)
        self.tweet = tweet
        self.response: Response | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        from taskhub.requests import request

        try:
            self.response = request(REQUEST_TOPIC, self.tweet, timeout=REQUEST_TIMEOUT)
        except Exception as error:  # reported by the test's thread
            self.error = error


def _reply_committed_while_the_bridge_is_dead(
    broker_redis: redis.Redis, log_dir: Path, tweet_id: str
) -> tuple[Process, _Requester]:
    """A request enqueued by a bridge that is then SIGKILLed; a worker started only afterwards
    commits the effect and its reply into the outbox, which nothing publishes. Returns the dead
    bridge (to restart: the same client id, so the same consumer in the outbox's group) and the
    requester, still waiting."""
    from taskhub.redis_keys import reply_outbox
    from tests.conftest import checkin_tweet

    client_id = f"{os.environ['TASKHUB_MQTT__CLIENT_ID']}-{uuid.uuid4().hex[:8]}"
    bridge = Process(
        "bridge",
        python_module("bridge"),
        log_dir,
        {"TASKHUB_MQTT__CLIENT_ID": client_id, "TASKHUB_MQTT__SESSION_EXPIRY": "300"},
    ).start()
    bridge.wait_output(BRIDGE_READY, timeout=30, count=2)
    requester = _Requester(checkin_tweet(tweet_id, f"Kill{tweet_id}"))
    requester.start()
    wait_for(lambda: broker_redis.llen("checkins") == 1, 30, "the request's task in its queue")
    bridge.kill()

    worker = start_worker("worker", log_dir, {})
    outbox = reply_outbox(get_settings().key_prefix)
    try:
        wait_for(lambda: broker_redis.xlen(outbox) == 1, 60, "the worker's reply in the outbox")
    finally:
        worker.kill()
    assert stored_checkins(broker_redis, [tweet_id]) == 1
    assert requester.is_alive(), "a reply came with no bridge running"
    return bridge, requester


def _answer(requester: _Requester, tweet_id: str) -> None:
    requester.join(REPLY_AFTER_RESTART)
    assert not requester.is_alive(), f"no reply {REPLY_AFTER_RESTART:g} s after the restart"
    assert requester.error is None, requester.error
    assert requester.response is not None
    assert requester.response.ok
    assert requester.response.document["tweet_id"] == tweet_id


@pytest.mark.usefixtures("standin_process")
def test_a_reply_committed_while_the_bridge_was_dead_reaches_the_requester_after_its_restart(
    broker_redis: redis.Redis, log_dir: Path
) -> None:
    bridge, requester = _reply_committed_while_the_bridge_is_dead(broker_redis, log_dir, "916001")

    bridge.start().wait_output(BRIDGE_READY, timeout=30, count=2)
    try:
        _answer(requester, "916001")
    finally:
        bridge.kill()


@pytest.mark.usefixtures("standin_process")
def test_a_reply_the_bridge_read_but_died_before_publishing_is_published_on_its_restart(
    broker_redis: redis.Redis, log_dir: Path
) -> None:
    """The bridge read the reply from the outbox and was killed before the broker's PUBACK: the
    entry is pending for its consumer. The test reads it as that consumer, as the dead bridge
    would have (no signal lands between the two deterministically)."""
    from bridge.replies import GROUP
    from taskhub.redis_keys import reply_outbox

    bridge, requester = _reply_committed_while_the_bridge_is_dead(broker_redis, log_dir, "916002")
    consumer = bridge.env["TASKHUB_MQTT__CLIENT_ID"]
    outbox = reply_outbox(get_settings().key_prefix)
    if not any(group["name"] == GROUP.encode() for group in broker_redis.xinfo_groups(outbox)):
        broker_redis.xgroup_create(outbox, GROUP, id="0")  # the bridge died before its first read
    assert broker_redis.xreadgroup(GROUP, consumer, {outbox: ">"}, count=10)

    bridge.start().wait_output(BRIDGE_READY, timeout=30, count=2)
    try:
        _answer(requester, "916002")
        wait_for(lambda: broker_redis.xlen(outbox) == 0, 30, "the published reply's deletion")
    finally:
        bridge.kill()
