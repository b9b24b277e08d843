"""The bridge's bulk MQTT receive path gives exactly what paho's own decoding gives, and its
batched acks settle exactly the messages acked, against a real Mosquitto, over MQTT 5 and 3.1.1.
"""

from __future__ import annotations

import functools
import select
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.bulk_client import READ_CHUNK_BYTES, BulkClient, decode_properties
from rig.processes import wait_for
from rig.servers import MosquittoServer
from taskhub.mqtt import connect_arguments, new_client
from taskhub.settings import MqttProtocol, MqttSettings

Seen = tuple[str, bytes, int, dict[str, Any]]
WAIT_SECONDS = 30.0


def _settings(port: int, protocol: MqttProtocol) -> MqttSettings:
    return MqttSettings(port=port, protocol=protocol)


def _reference(settings: MqttSettings, client_id: str, seen: list[Seen]) -> mqtt.Client:
    """A plain paho subscriber on its network thread, recording what paho decodes."""
    client = new_client(settings, client_id, persistent=True)

    def on_message(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        properties = message.properties.json() if message.properties else {}
        seen.append((message.topic, bytes(message.payload), message.qos, _meaningful(properties)))

    client.on_message = on_message
    return client


def _meaningful(properties: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in properties.items() if value not in (None, [], "")}


class BulkDriver:
    """A BulkClient driven the way the bridge drives it: one thread, reads, then writes."""

    def __init__(self, settings: MqttSettings, client_id: str) -> None:
        self.seen: list[Seen] = []
        self.mids: list[int] = []
        self.retains: list[bool] = []
        self.client: BulkClient = new_client(  # type: ignore[assignment]
            settings,
            client_id,
            persistent=True,
            manual_ack=True,
            client_class=functools.partial(BulkClient, sink=self._on_bulk_message),
        )
        self.client.on_message = self._on_qos2
        self.settings = settings

    def _on_bulk_message(
        self, topic: str, payload: bytes, mid: int, qos: int, retain: bool, raw: bytes
    ) -> None:
        self.seen.append((topic, payload, qos, _meaningful(decode_properties(raw))))
        self.mids.append(mid)
        self.retains.append(retain)

    def _on_qos2(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        properties = message.properties.json() if message.properties else {}
        self.seen.append((message.topic, bytes(message.payload), 2, _meaningful(properties)))
        self.mids.append(message.mid)

    def connect_and_subscribe(self, topic_filter: str, qos: int) -> None:
        subscribed = threading.Event()
        self.client.on_connect = lambda client, *_: client.subscribe(topic_filter, qos=qos)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect(**connect_arguments(self.settings, persistent=True))
        self.drive_until(subscribed.is_set, f"the subscription to {topic_filter}")

    def drive_until(self, done: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + WAIT_SECONDS
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {WAIT_SECONDS:g}s waiting for {what}")
            sock = self.client.socket()
            assert sock is not None, f"the connection closed while waiting for {what}"
            if not self.client.buffered_packet():
                select.select([sock], [], [], 0.05)
            self.client.read_packets(10_000)
            if self.client.want_write():
                self.client.loop_write()
            self.client.loop_misc()


def _subscribe(client: mqtt.Client, topic_filter: str) -> None:
    subscribed = threading.Event()
    client.on_subscribe = lambda *_: subscribed.set()
    client.subscribe(topic_filter, qos=2)
    assert subscribed.wait(WAIT_SECONDS)


def _publisher(settings: MqttSettings) -> mqtt.Client:
    client = new_client(settings, "publisher", persistent=False)
    client.connect(**connect_arguments(settings, persistent=False))
    client.loop_start()
    return client


def _properties(index: int) -> Properties:
    properties = Properties(PacketTypes.PUBLISH)
    properties.ContentType = "application/json"
    properties.UserProperty = [("n", str(index)), ("sensor", "boiler-2")]
    properties.CorrelationData = bytes([index % 256, 0, 255])
    return properties


MESSAGES: list[tuple[str, bytes, int]] = [
    ("q/tiny", b"{}", 1),
    ("q/empty", b"", 1),
    ("q/qos0", b"fire and forget", 0),
    ("q/qos2", b"exactly once", 2),
    ("q/caf\u00e9/\u5317\u4eac", "caf\u00e9".encode(), 1),
    ("q/large", bytes(range(256)) * (3 * READ_CHUNK_BYTES // 256 + 7), 1),  # spans many reads
    *((f"q/many/{n}", f'{{"seq": {n}}}'.encode(), n % 2) for n in range(2000)),
]


@pytest.mark.parametrize("protocol", [MqttProtocol.V5, MqttProtocol.V311])
def test_bulk_path_receives_what_paho_decodes(
    private_mosquitto: MosquittoServer, protocol: MqttProtocol
) -> None:
    settings = _settings(private_mosquitto.port, protocol)
    expected: list[Seen] = []
    reference = _reference(settings, "reference", expected)
    reference.connect(**connect_arguments(settings, persistent=True))
    reference.loop_start()
    _subscribe(reference, "q/#")
    bulk = BulkDriver(settings, "bulk")
    bulk.connect_and_subscribe("q/#", qos=2)

    publisher = _publisher(settings)
    infos = [
        publisher.publish(
            topic, payload, qos, properties=_properties(n) if protocol is MqttProtocol.V5 else None
        )
        for n, (topic, payload, qos) in enumerate(MESSAGES)
    ]
    for info in infos:
        info.wait_for_publish(WAIT_SECONDS)

    acked = 0

    def ack_all() -> bool:
        nonlocal acked
        for mid, (_, _, qos, _) in zip(bulk.mids[acked:], bulk.seen[acked:], strict=True):
            if qos:
                bulk.client.ack(mid, qos)
        acked = len(bulk.seen)
        bulk.client.send_acks()
        return len(bulk.seen) >= len(MESSAGES)

    bulk.drive_until(ack_all, f"{len(MESSAGES)} messages on the bulk path")
    wait_for(lambda: len(expected) >= len(MESSAGES), WAIT_SECONDS, "the reference subscriber")
    publisher.disconnect()
    reference.disconnect()
    bulk.client.disconnect()

    # MQTT orders messages per QoS, not across them: compare each QoS's stream in order.
    for qos in (0, 1, 2):
        got = [seen for seen in bulk.seen if seen[2] == qos]
        want = [seen for seen in expected if seen[2] == qos]
        assert got == want, f"QoS {qos} differs"
    assert len(bulk.seen) == len(MESSAGES)
    if protocol is MqttProtocol.V5:
        assert bulk.seen[0][3]["UserProperty"] == [("n", "0"), ("sensor", "boiler-2")]


@pytest.mark.parametrize("protocol", [MqttProtocol.V5, MqttProtocol.V311])
def test_the_bulk_path_reads_the_retain_flag(
    private_mosquitto: MosquittoServer, protocol: MqttProtocol
) -> None:
    settings = _settings(private_mosquitto.port, protocol)
    publisher = _publisher(settings)
    publisher.publish("r/kept", b"last known", qos=1, retain=True).wait_for_publish(WAIT_SECONDS)
    bulk = BulkDriver(settings, "bulk-retain")
    bulk.connect_and_subscribe("r/#", qos=1)
    publisher.publish("r/live", b"now", qos=1).wait_for_publish(WAIT_SECONDS)
    bulk.drive_until(lambda: len(bulk.seen) >= 2, "the retained and the live message")
    publisher.disconnect()
    bulk.client.disconnect()
    assert [(seen[0], retain) for seen, retain in zip(bulk.seen, bulk.retains, strict=True)] == [
        ("r/kept", True),
        ("r/live", False),
    ]


def test_batched_acks_settle_exactly_the_acked_messages(
    private_mosquitto: MosquittoServer,
) -> None:
    settings = _settings(private_mosquitto.port, MqttProtocol.V5)
    bulk = BulkDriver(settings, "acker")
    bulk.connect_and_subscribe("a/#", qos=1)

    publisher = _publisher(settings)
    for info in [publisher.publish("a/x", str(n).encode(), qos=1) for n in range(500)]:
        info.wait_for_publish(WAIT_SECONDS)
    publisher.disconnect()
    bulk.drive_until(lambda: len(bulk.seen) >= 500, "500 messages")
    for mid in bulk.mids[:300]:
        bulk.client.ack(mid, 1)
    bulk.client.send_acks()  # one write for all 300
    bulk.client.ping()  # the broker answers once it has read the acks before it
    bulk.drive_until(bulk.client.ping_answered, "the broker to read the acks")
    bulk.client.disconnect()
    bulk.drive_until(lambda: bulk.client.socket() is None, "the disconnect")

    redelivered: list[Seen] = []
    again = _reference(settings, "acker", redelivered)
    again.connect(**connect_arguments(settings, persistent=True))
    again.loop_start()
    try:
        wait_for(lambda: len(redelivered) >= 200, WAIT_SECONDS, "200 unacked messages again")
        # Anything more would arrive right behind them; publish a marker and wait for it.
        marker = _publisher(settings)
        marker.publish("a/x", b"marker", qos=1).wait_for_publish(WAIT_SECONDS)
        marker.disconnect()
        wait_for(lambda: redelivered[-1][1] == b"marker", WAIT_SECONDS, "the marker")
    finally:
        again.disconnect()
        again.loop_stop()
    assert [payload for _, payload, _, _ in redelivered[:-1]] == [
        str(n).encode() for n in range(300, 500)
    ]


def test_a_malformed_remaining_length_is_a_protocol_error() -> None:
    client = BulkClient(callback_api_version=CallbackAPIVersion.VERSION2, client_id="x", sink=print)
    client._rx = bytearray([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01])
    assert client._next_packet_bounds() == (-1, -1)
    client._rx = bytearray([0x30, 0x05, 0x00, 0x01])  # five bytes promised, two here
    assert client._next_packet_bounds() is None
    assert not client.buffered_packet()
