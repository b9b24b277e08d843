"""MQTT 5 requests through a real bridge, Redis and Mosquitto: a refused Response Topic, a REFUSED
reply for a bad request, the reply outbox published and emptied, and the reply address carried to
the worker in the task message (docs/requests.md, "At the bridge")."""

from __future__ import annotations

import json
import os
import queue
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import paho.mqtt.client as mqtt
import pytest
import redis
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.replies import CLAIM_EVERY_SECONDS, GROUP, POLL_SECONDS, ReplyOutbox
from rig.processes import Process, wait_for
from taskhub import redis_keys
from taskhub.deadletters import DeadLetterStream, Reason
from taskhub.mqtt import connect_arguments, new_client
from taskhub.replies import (
    CONTENT_TYPE,
    REPLY_HEADER,
    STATUS_PROPERTY,
    Reply,
    ReplyAddress,
    ReplyStatus,
    add_reply,
)
from taskhub.response_topics import ResponseTopics
from taskhub.settings import get_settings
from tests.conftest import checkin_tweet
from tests.fakes.clock import FakeClock
from tests.fakes.source import FakeSource

pytestmark = pytest.mark.e2e

TIMEOUT = 30


@dataclass(frozen=True)
class Heard:
    topic: str
    payload: bytes
    correlation: bytes | None
    content_type: str | None
    user_properties: list[tuple[str, str]]


class Listener:
    """An MQTT 5 client subscribed to every topic below the run's prefix that a test replies to."""

    def __init__(self, prefix: str) -> None:
        self.heard: queue.Queue[Heard] = queue.Queue()
        self.all: list[Heard] = []
        subscribed = threading.Event()
        self.client = new_client(
            get_settings().mqtt, f"listener-{uuid.uuid4().hex[:8]}", persistent=False
        )
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.on_connect = lambda client, *args: client.subscribe(
            [(f"{prefix}replies/#", 1), (f"{prefix}elsewhere/#", 1)]
        )
        self.client.connect(**connect_arguments(get_settings().mqtt, persistent=False))
        self.client.loop_start()
        assert subscribed.wait(TIMEOUT), "the listener did not subscribe"

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        properties = message.properties
        heard = Heard(
            message.topic,
            bytes(message.payload),
            getattr(properties, "CorrelationData", None),
            getattr(properties, "ContentType", None),
            [tuple(pair) for pair in getattr(properties, "UserProperty", [])],
        )
        self.all.append(heard)
        self.heard.put(heard)

    def next(self) -> Heard:
        return self.heard.get(timeout=TIMEOUT)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def listener(topic_prefix: str) -> Iterator[Listener]:
    heard = Listener(topic_prefix)
    yield heard
    heard.close()


def _request(topic: str, payload: bytes, response_topic: str, correlation: bytes) -> None:
    """Publish one MQTT 5 request, QoS 1, and wait for its PUBACK."""
    client = new_client(get_settings().mqtt, f"requester-{os.getpid()}", persistent=False)
    client.connect(**connect_arguments(get_settings().mqtt, persistent=False))
    client.loop_start()
    try:
        properties = Properties(PacketTypes.PUBLISH)
        properties.ResponseTopic = response_topic
        properties.CorrelationData = correlation
        client.publish(topic, payload, qos=1, properties=properties).wait_for_publish(TIMEOUT)
    finally:
        client.loop_stop()
        client.disconnect()


def _checkin_topic(prefix: str) -> str:
    return f"{prefix}checkins/nyc/tweets"


def _letters(client: redis.Redis) -> DeadLetterStream:
    return DeadLetterStream(client, get_settings().key_prefix)


def _outbox() -> str:
    return redis_keys.reply_outbox(get_settings().key_prefix)


@pytest.mark.usefixtures("bridge")
def test_a_refused_response_topic_is_dead_lettered_not_enqueued_and_never_published_to(
    broker_redis: redis.Redis, topic_prefix: str, listener: Listener
) -> None:
    good = json.dumps(checkin_tweet("915001", "Rq0001")).encode()
    _request(_checkin_topic(topic_prefix), good, f"{topic_prefix}elsewhere/d1", b"c-1")
    letters = _letters(broker_redis)
    wait_for(lambda: len(letters) == 1, TIMEOUT, "the refused request's dead letter")
    [letter] = list(letters.scan())
    assert letter.reason is Reason.RESPONSE_TOPIC_REFUSED
    assert "elsewhere/d1" in letter.detail
    assert broker_redis.llen("checkins") == 0, "a refused request was enqueued"

    # A later refused request on an allowed topic is answered: by then the first would have been.
    _request(_checkin_topic(topic_prefix), b"{bad", f"{topic_prefix}replies/marker", b"m")
    assert listener.next().topic == f"{topic_prefix}replies/marker"
    assert [heard.topic for heard in listener.all] == [f"{topic_prefix}replies/marker"]


@pytest.mark.usefixtures("bridge")
def test_a_bad_request_gets_a_refused_reply_on_its_response_topic(
    broker_redis: redis.Redis, topic_prefix: str, listener: Listener
) -> None:
    reply_topic = f"{topic_prefix}replies/dev-7"
    _request(_checkin_topic(topic_prefix), b"{not json", reply_topic, b"\x00corr-7")
    heard = listener.next()
    assert heard.topic == reply_topic
    assert heard.correlation == b"\x00corr-7"
    assert heard.content_type == CONTENT_TYPE
    assert (STATUS_PROPERTY, "refused") in heard.user_properties
    error = json.loads(heard.payload)["error"]
    assert error["reason"] == "invalid_json"
    assert error["detail"]
    [letter] = list(_letters(broker_redis).scan())
    assert letter.reason is Reason.INVALID_JSON
    wait_for(lambda: broker_redis.xlen(_outbox()) == 0, TIMEOUT, "the outbox to be emptied")


@pytest.mark.usefixtures("bridge")
def test_an_outbox_entry_is_published_once_with_its_properties_then_deleted(
    broker_redis: redis.Redis, topic_prefix: str, listener: Listener
) -> None:
    settings = get_settings()
    reply = Reply(
        ReplyAddress(f"{topic_prefix}replies/dev-3", b"req-3"),
        ReplyStatus.OK,
        b'{"stored": true}',
        (("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),),
    )
    with broker_redis.pipeline(transaction=True) as pipe:  # as a worker adds it
        add_reply(pipe, _outbox(), reply.entry(), settings.replies.outbox_maxlen)
        pipe.xadd(_outbox(), {"address": "not json"})  # an entry no bridge can read
        pipe.execute()
    heard = listener.next()
    assert heard.topic == f"{topic_prefix}replies/dev-3"
    assert heard.payload == b'{"stored": true}'
    assert heard.correlation == b"req-3"
    assert heard.content_type == CONTENT_TYPE
    assert heard.user_properties == [(STATUS_PROPERTY, "ok"), *reply.user_properties]
    wait_for(lambda: broker_redis.xlen(_outbox()) == 0, TIMEOUT, "both entries deleted")
    assert broker_redis.xpending(_outbox(), "bridges")["pending"] == 0

    marker = Reply(ReplyAddress(f"{topic_prefix}replies/marker"), ReplyStatus.OK, b"{}")
    broker_redis.xadd(_outbox(), marker.entry())  # type: ignore[arg-type]
    assert listener.next().topic == f"{topic_prefix}replies/marker"
    assert [heard.topic for heard in listener.all].count(f"{topic_prefix}replies/dev-3") == 1


def test_a_reply_to_a_refused_topic_in_the_outbox_is_deleted_unpublished(
    broker_redis: redis.Redis, topic_prefix: str, listener: Listener, bridge: Process
) -> None:
    forged = Reply(ReplyAddress(f"{topic_prefix}elsewhere/x"), ReplyStatus.OK, b"{}")
    marker = Reply(ReplyAddress(f"{topic_prefix}replies/marker"), ReplyStatus.OK, b"{}")
    broker_redis.xadd(_outbox(), forged.entry())  # type: ignore[arg-type]
    broker_redis.xadd(_outbox(), marker.entry())  # type: ignore[arg-type]
    assert listener.next().topic == f"{topic_prefix}replies/marker"
    assert [heard.topic for heard in listener.all] == [f"{topic_prefix}replies/marker"]
    wait_for(lambda: broker_redis.xlen(_outbox()) == 0, TIMEOUT, "both entries deleted")
    assert "deleted unpublished" in bridge.output()


@pytest.mark.usefixtures("bridge")
def test_an_allowed_request_is_enqueued_with_its_reply_address(
    broker_redis: redis.Redis, topic_prefix: str
) -> None:
    good = json.dumps(checkin_tweet("915002", "Rq0002")).encode()
    reply_topic = f"{topic_prefix}replies/dev-2"
    _request(_checkin_topic(topic_prefix), good, reply_topic, b"\xffcorr-2")
    wait_for(
        lambda: broker_redis.llen("checkins") == 1,
        TIMEOUT,
        f"the request's task (dead letters: {list(_letters(broker_redis).scan())})",
    )
    message = json.loads(broker_redis.lindex("checkins", 0) or b"")
    header = message["headers"][REPLY_HEADER]
    assert ReplyAddress.from_header(header) == ReplyAddress(reply_topic, b"\xffcorr-2")
    assert len(_letters(broker_redis)) == 0


# The outbox reader against the real Redis, with the MQTT side in memory: when entries go.


def _outbox_reader(
    client: redis.Redis, consumer: str = "bridge-a"
) -> tuple[ReplyOutbox, FakeSource, FakeClock]:
    clock = FakeClock()
    source = FakeSource(clock)
    outbox = ReplyOutbox(
        client, get_settings().key_prefix, consumer, source, ResponseTopics(("#",)), clock
    )
    return outbox, source, clock


def _turn(outbox: ReplyOutbox, clock: FakeClock) -> None:
    clock.advance(POLL_SECONDS)
    outbox.turn()


def test_an_entry_stays_in_the_outbox_until_its_puback_comes(broker_redis: redis.Redis) -> None:
    outbox, source, clock = _outbox_reader(broker_redis)
    reply = Reply(ReplyAddress("replies/a", b"k"), ReplyStatus.FAILED, b"{}")
    broker_redis.xadd(_outbox(), reply.entry())  # type: ignore[arg-type]
    _turn(outbox, clock)
    assert list(source.replies.values()) == [reply]
    _turn(outbox, clock)
    assert broker_redis.xlen(_outbox()) == 1, "deleted before the broker acknowledged it"
    assert len(source.replies) == 1, "published twice"
    source.puback_replies()
    _turn(outbox, clock)
    assert broker_redis.xlen(_outbox()) == 0
    assert broker_redis.xpending(_outbox(), GROUP)["pending"] == 0
    assert outbox.published == 1


def test_nothing_is_read_while_mqtt_is_disconnected(broker_redis: redis.Redis) -> None:
    outbox, source, clock = _outbox_reader(broker_redis)
    source.connected = False
    broker_redis.xadd(_outbox(), Reply(ReplyAddress("r/a"), ReplyStatus.OK, b"1").entry())  # type: ignore[arg-type]
    _turn(outbox, clock)
    assert not source.replies
    assert not broker_redis.exists(_outbox()) or not broker_redis.xinfo_groups(_outbox()), (
        "read while disconnected"
    )
    source.connected = True
    _turn(outbox, clock)
    assert [reply.payload for reply in source.replies.values()] == [b"1"]


def test_entries_a_dead_replica_read_are_claimed_and_published_by_a_live_one(
    broker_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead, dead_source, dead_clock = _outbox_reader(broker_redis, "bridge-dead")
    broker_redis.xadd(_outbox(), Reply(ReplyAddress("r/a"), ReplyStatus.OK, b"1").entry())  # type: ignore[arg-type]
    _turn(dead, dead_clock)
    assert len(dead_source.replies) == 1  # published, then the replica died before its PUBACK
    monkeypatch.setattr("bridge.replies.CLAIM_IDLE_SECONDS", 0.0)
    live, live_source, live_clock = _outbox_reader(broker_redis, "bridge-live")
    _turn(live, live_clock)
    assert not live_source.replies, "claimed before CLAIM_EVERY_SECONDS"
    live_clock.advance(CLAIM_EVERY_SECONDS)
    _turn(live, live_clock)
    assert [reply.payload for reply in live_source.replies.values()] == [b"1"]
    live_source.puback_replies()
    _turn(live, live_clock)
    assert broker_redis.xlen(_outbox()) == 0


def test_a_restarted_replica_publishes_the_entries_it_read_before_at_once(
    broker_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not CLAIM_IDLE_SECONDS later, past its requesters' timeouts: its consumer is its own."""
    for payload in (b"1", b"2", b"3"):
        broker_redis.xadd(_outbox(), Reply(ReplyAddress("r/a"), ReplyStatus.OK, payload).entry())  # type: ignore[arg-type]
    before, before_source, before_clock = _outbox_reader(broker_redis, "bridge-a")
    _turn(before, before_clock)
    assert len(before_source.replies) == 3  # published, then the replica died before the PUBACKs

    monkeypatch.setattr("bridge.replies.MAX_IN_FLIGHT", 2)
    after, source, clock = _outbox_reader(broker_redis, "bridge-a")
    _turn(after, clock)
    assert [reply.payload for reply in source.replies.values()] == [b"1", b"2"]
    _turn(after, clock)
    assert len(source.replies) == 2, "more than MAX_IN_FLIGHT in flight"
    source.puback_replies()
    _turn(after, clock)
    assert [reply.payload for reply in source.replies.values()] == [b"3"]
    _turn(after, clock)
    assert len(source.replies) == 1, "its own reply in flight published again"
    source.puback_replies()
    _turn(after, clock)
    assert broker_redis.xlen(_outbox()) == 0
    assert after.published == 3
