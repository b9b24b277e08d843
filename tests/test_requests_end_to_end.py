"""The whole request loop with real processes (docs/requests.md): `taskhub.request` publishes an
MQTT 5 request through Mosquitto, `python -m bridge` enqueues it, `celery -A taskhub worker`
resolves it against the stand-in and adds its reply to the outbox, and the bridge publishes the
reply back to the requester. One bridge and one worker serve the whole module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
import pytest
import redis

from rig.processes import Process, start_worker
from taskhub.replies import CONTENT_TYPE, STATUS_PROPERTY, ReplyStatus
from tests.conftest import checkin_tweet, resolved_announcements, start_bridge

if TYPE_CHECKING:
    from taskhub.demo.standin import StandinServer
    from taskhub.requests import Response

pytestmark = pytest.mark.e2e

TOPIC = "checkins/nyc/tweets"
"""Below the run's topic prefix: the check-in route's topic."""
REPLY_TIMEOUT = 30.0
"""Generous for a loaded machine; a reply normally takes a few tens of milliseconds."""
FAULT_SECONDS = 60.0


@pytest.fixture(scope="module")
def module_redis() -> Iterator[redis.Redis]:
    """This run's Redis database, emptied once for the module: emptying it between tests would
    pull kombu's bindings and the outbox's consumer group from under the running processes."""
    client = redis.Redis.from_url(os.environ["TASKHUB_BROKER_URL"])
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(scope="module")
def loop(
    tmp_path_factory: pytest.TempPathFactory, module_redis: redis.Redis, standin: StandinServer
) -> Iterator[tuple[Process, Process]]:
    """One worker and one bridge (an MQTT session of its own) for every test of the module."""
    log_dir = tmp_path_factory.mktemp("request-loop")
    worker = start_worker("requests", log_dir, {}, autoscale="8,2")
    try:
        bridge = start_bridge(log_dir)
    except BaseException:
        worker.kill()
        raise
    try:
        yield worker, bridge
    finally:
        bridge.kill()
        worker.kill()


def _ask(payload: Any) -> Response:
    from taskhub.requests import request

    return request(TOPIC, payload, timeout=REPLY_TIMEOUT)


@pytest.mark.usefixtures("loop")
def test_a_checkin_request_is_answered_ok_with_its_resolved_venue(
    module_redis: redis.Redis,
) -> None:
    from taskhub.demo.venues import venue_for_code
    from tests.conftest import load_checkin

    reply = _ask(checkin_tweet("915001", "ReqOk01"))

    assert reply.status is ReplyStatus.OK
    venue = venue_for_code("ReqOk01")
    assert reply.document["tweet_id"] == "915001"
    assert reply.document["city"] == "nyc"
    assert reply.document["venue"]["id"] == venue.venue_id
    assert reply.document["venue"]["name"] == venue.name
    assert reply.document == load_checkin(module_redis, "915001"), "the stored effect, replied"


@pytest.mark.usefixtures("loop")
def test_a_request_with_a_bad_payload_is_refused_with_the_schema_reason() -> None:
    tweet = checkin_tweet("915002", "ReqBad01")
    del tweet["user"]

    reply = _ask(tweet)

    assert reply.status is ReplyStatus.REFUSED
    assert reply.error["reason"] == "schema"
    assert reply.error["task_id"] is None


@pytest.mark.usefixtures("loop")
def test_a_request_whose_task_fails_for_good_is_answered_failed(
    module_redis: redis.Redis, standin: StandinServer
) -> None:
    # The short-link service answers 404 for a while: the link does not exist, no retry helps.
    standin.set_fault("shortlink", "errors", FAULT_SECONDS, status=404)
    try:
        reply = _ask(checkin_tweet("915003", "ReqGone01"))
    finally:
        standin.clear_faults()

    assert reply.status is ReplyStatus.FAILED
    assert reply.error["reason"] == "task_failed"
    assert "404" in reply.error["detail"]
    assert reply.error["task_id"]
    assert resolved_announcements(module_redis, "915003") == 0


@pytest.mark.usefixtures("loop")
def test_the_same_request_twice_gets_the_same_stored_result_from_one_effect(
    module_redis: redis.Redis,
) -> None:
    from taskhub import redis_keys
    from taskhub.settings import get_settings

    tweet = checkin_tweet("915004", "ReqTwice01")
    first = _ask(tweet)
    second = _ask(tweet)

    assert (first.status, second.status) == (ReplyStatus.OK, ReplyStatus.OK)
    assert second.payload == first.payload, "the duplicate replies with the stored result"
    assert second.document["task_id"] == first.document["task_id"]
    assert resolved_announcements(module_redis, "915004") == 1
    duplicates = module_redis.hget(
        redis_keys.duplicates_absorbed(get_settings().key_prefix), "tasks.checkins.resolve_checkin"
    )
    assert duplicates == b"1"


def _command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taskhub.cli", "request", *args],
        capture_output=True,
        text=True,
        timeout=REPLY_TIMEOUT + 30,
        check=False,
    )


@pytest.mark.usefixtures("loop")
def test_the_request_command_prints_the_reply_and_exits_by_its_status() -> None:
    timeout = ("--timeout", str(REPLY_TIMEOUT))
    answered = _command(TOPIC, json.dumps(checkin_tweet("915005", "ReqCli01")), *timeout)
    assert answered.returncode == 0, answered.stderr
    assert json.loads(answered.stdout)["tweet_id"] == "915005"

    bad = checkin_tweet("915006", "ReqCli02")
    bad["id"] = "not a number"
    refused = _command(TOPIC, json.dumps(bad), *timeout)
    assert refused.returncode == 1, refused.stderr
    assert json.loads(refused.stdout)["error"]["reason"] == "schema"
    assert refused.stderr.startswith("taskhub request: refused: schema: ")


@pytest.mark.usefixtures("loop")
def test_a_plain_mqtt_5_subscriber_sees_the_replys_properties(topic_prefix: str) -> None:
    """What any MQTT 5 client (not taskhub's requester) gets on its Response Topic."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from taskhub.mqtt import connect_arguments, new_client
    from taskhub.settings import MqttProtocol, get_settings

    settings = get_settings().mqtt.model_copy(update={"protocol": MqttProtocol.V5})
    response_topic = f"{topic_prefix}replies/plain-{uuid.uuid4().hex}"
    correlation = b"\x00\x01plain\xff"
    heard: list[mqtt.MQTTMessage] = []
    subscribed, arrived = threading.Event(), threading.Event()

    def on_message(_client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        heard.append(message)
        arrived.set()

    client = new_client(settings, f"plain-{uuid.uuid4().hex[:8]}", persistent=False)
    client.on_subscribe = lambda *_args: subscribed.set()
    client.on_connect = lambda c, *_args: c.subscribe(response_topic, qos=1)
    client.on_message = on_message
    client.connect(**connect_arguments(settings, persistent=False))
    client.loop_start()
    try:
        assert subscribed.wait(REPLY_TIMEOUT)
        properties = Properties(PacketTypes.PUBLISH)
        properties.ResponseTopic = response_topic
        properties.CorrelationData = correlation
        tweet = json.dumps(checkin_tweet("915007", "ReqRaw01")).encode()
        client.publish(f"{topic_prefix}{TOPIC}", tweet, qos=1, properties=properties)
        assert arrived.wait(REPLY_TIMEOUT), "no reply on the Response Topic"
    finally:
        client.disconnect()
        client.loop_stop()

    (reply,) = heard
    assert reply.qos == 1
    assert getattr(reply.properties, "CorrelationData", None) == correlation
    assert getattr(reply.properties, "ContentType", None) == CONTENT_TYPE
    assert (STATUS_PROPERTY, "ok") in getattr(reply.properties, "UserProperty", [])
    assert json.loads(reply.payload)["tweet_id"] == "915007"
