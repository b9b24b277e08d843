"""The feed's broker link, driven through paho's callbacks by hand: one stderr line per outage and
one per return, counts that add up, and waits that a stop ends."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from taskhub.demo.broker_link import BrokerLink

WAIT_SECONDS = 10


@dataclass
class Sent:
    rc: MQTTErrorCode


class FakeClient:
    """Takes the link's callbacks and answers publish() with a chosen return code."""

    def __init__(self) -> None:
        self.rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        self.on_connect: Any = None
        self.on_connect_fail: Any = None
        self.on_disconnect: Any = None
        self.on_publish: Any = None

    def publish(self, topic: str, payload: bytes, qos: int) -> Sent:
        return Sent(self.rc)

    def connected(self, reason: str = "Success") -> None:
        self.on_connect(self, None, None, ReasonCode(PacketTypes.CONNACK, reason), None)

    def lost(self) -> None:
        reason = ReasonCode(PacketTypes.DISCONNECT, "Unspecified error")
        self.on_disconnect(self, None, None, reason, None)

    def acked(self) -> None:
        self.on_publish(self, None, 1, ReasonCode(PacketTypes.PUBACK, "Success"), None)


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Rig:
    link: BrokerLink
    client: FakeClient
    clock: Clock
    lines: list[str]
    """What the link reported."""


def _rig(qos: int = 1) -> Rig:
    clock, lines, client = Clock(), list[str](), FakeClient()
    link = BrokerLink("broker:1883", qos=qos, report=lines.append, clock=clock)
    link.attach(client)
    return Rig(link, client, clock, lines)


def test_an_outage_is_one_line_when_lost_and_one_when_back_saying_what_is_resent() -> None:
    rig = _rig()
    link, client = rig.link, rig.client
    client.connected()
    for _ in range(3):
        link.publish(client, "t", b"x")
    client.acked()
    client.lost()
    for _ in range(3):
        client.on_connect_fail(client, None)  # paho's retries while the broker is away
    rig.clock.now += 4.2
    client.connected()
    assert rig.lines == [
        "feed: broker unreachable at broker:1883 (connection lost: Unspecified error), retrying",
        "feed: reconnected after 4.2s; 2 messages resent",
    ]
    assert (link.acknowledged, link.unacknowledged) == (1, 2)


def test_a_broker_missing_at_the_start_is_one_line_and_then_one_when_it_answers() -> None:
    rig = _rig()
    client = rig.client
    client.on_connect_fail(client, None)
    rig.clock.now += 2
    client.on_connect_fail(client, None)
    client.connected()
    assert rig.lines == [
        "feed: broker unreachable at broker:1883 (cannot connect), retrying",
        "feed: connected after 2.0s",
    ]


def test_a_refusal_adds_a_line_with_its_reason_once() -> None:
    rig = _rig()
    client = rig.client
    client.connected()
    client.lost()
    client.connected("Not authorized")
    client.connected("Not authorized")
    assert rig.lines[1:] == [
        "feed: broker unreachable at broker:1883 (refused: Not authorized), retrying"
    ]


def test_a_stop_ends_a_wait_for_the_broker() -> None:
    link = _rig().link
    ready: list[bool] = []
    waiter = threading.Thread(target=lambda: ready.append(link.wait_ready(1)))
    waiter.start()
    link.stop()
    waiter.join(WAIT_SECONDS)
    assert ready == [False]


def test_the_end_waits_for_every_acknowledgement() -> None:
    rig = _rig()
    link, client = rig.link, rig.client
    client.connected()
    link.publish(client, "t", b"x")
    settled: list[bool] = []
    waiter = threading.Thread(target=lambda: settled.append(link.wait_settled()))
    waiter.start()
    waiter.join(0.2)
    assert settled == []  # still waiting: the PUBACK has not come
    client.acked()
    waiter.join(WAIT_SECONDS)
    assert settled == [True]


def test_qos_0_counts_a_message_dropped_while_down_as_unacknowledged() -> None:
    rig = _rig(qos=0)
    link, client = rig.link, rig.client
    link.publish(client, "t", b"x")
    client.rc = MQTTErrorCode.MQTT_ERR_NO_CONN
    link.publish(client, "t", b"x")
    assert (link.acknowledged, link.unacknowledged) == (1, 1)
    assert link.wait_settled()
