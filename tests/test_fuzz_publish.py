"""Property-based fuzzing of the bridge's own PUBLISH decoder (bridge/bulk_client.py), against
paho's.

The same bytes, cut into the same reads, go to a BulkClient and to a plain paho client: valid
PUBLISH packets and PUBLISH packets broken every way the wire allows (cut short, a remaining length
or topic length or property length that lies, a topic that is not UTF-8, QoS 3, packet id 0,
Variable Byte Integers of five bytes), among other packets and random bytes. The bulk client raises
nothing, never stops making progress, takes no byte of the next packet, and delivers, acks and ends
the connection exactly as paho does. Two differences are by design: MQTT 5 properties stay bytes
until a dead letter needs them, so a malformed property block is found when it is decoded
(`decode_properties` raises MalformedPacket, and nothing else), not when it arrives; and a remaining
length that runs to four bytes, all saying "more", is refused at once, where paho waits for a
fifth byte to refuse it.

No server; a few seconds, with a fixed seed so that a failure in CI replays anywhere.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import cycle
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.bulk_client import READ_CHUNK_BYTES, BulkClient, decode_properties
from bridge.source import UNDECODABLE_PROPERTIES, MqttSource
from taskhub.deadletters import DeadLetter, Reason
from taskhub.intake import Intake
from taskhub.routes import route_table
from taskhub.settings import MqttSettings

FUZZ_SEED = 20261201
"""Change it to search elsewhere; CI always searches here."""
FUZZ = settings(
    max_examples=400,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PUBLISH = 0x30
MAX_REMAINING_LENGTH = 2**28 - 1
"""The largest length four Variable Byte Integer bytes can say."""

Event = tuple[str, bytes, int, int, bool, Any]
"""A delivered message: topic, payload, packet id, QoS, retain, properties (or UNDECODABLE)."""
UNDECODABLE = "undecodable"


def variable_byte_integer(value: int) -> bytes:
    """MQTT's encoding, without its four-byte limit: a value past 2**28 - 1 takes five or more."""
    out = bytearray()
    while True:
        value, digit = divmod(value, 128)
        out.append(digit | (0x80 if value else 0))
        if not value:
            return bytes(out)


def non_minimal(value: int) -> bytes:
    """`value` in one byte more than it needs, which MQTT forbids and decoders still read."""
    encoded = bytearray(variable_byte_integer(value))
    encoded[-1] |= 0x80
    return bytes(encoded) + b"\x00"


texts = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=12)
topics = st.one_of(
    st.sampled_from([b"sensors/dev-1/reading", b"checkins/nyc/tweets", b"", b"a/+/#"]),
    texts.map(str.encode),
    st.binary(max_size=12),  # mostly not UTF-8
)
payloads = st.binary(max_size=48)


@st.composite
def properties(draw: st.DrawFn) -> bytes:
    """A PUBLISH's property block as paho packs it: length first, then each property."""
    block = Properties(PacketTypes.PUBLISH)
    if draw(st.booleans()):
        block.PayloadFormatIndicator = draw(st.integers(0, 1))
    if draw(st.booleans()):
        block.MessageExpiryInterval = draw(st.integers(0, 2**32 - 1))
    if draw(st.booleans()):
        block.ContentType = draw(texts)
    if draw(st.booleans()):
        block.CorrelationData = draw(st.binary(max_size=8))
    if draw(st.booleans()):
        block.UserProperty = draw(st.lists(st.tuples(texts, texts), min_size=1, max_size=3))
    if draw(st.booleans()):
        block.SubscriptionIdentifier = draw(
            st.lists(st.integers(1, MAX_REMAINING_LENGTH), max_size=2)
        )
    packed: bytes = block.pack()
    return packed


property_blocks = st.one_of(
    st.just(b"\x00"),
    properties(),
    # A length that lies, or content that is not properties at all.
    st.builds(
        lambda length, content: variable_byte_integer(length) + content,
        st.one_of(st.integers(0, 16), st.integers(0, 2**35)),
        st.binary(max_size=16),
    ),
    st.binary(max_size=8),
)


@st.composite
def publish_packets(draw: st.DrawFn, v5: bool) -> bytes:
    """A PUBLISH, valid or broken in one or more of the ways the module docstring lists."""
    qos = draw(st.sampled_from([0, 0, 1, 1, 2, 3]))
    first = PUBLISH | draw(st.integers(0, 1)) << 3 | qos << 1 | draw(st.integers(0, 1))
    topic = draw(topics)
    topic_length = draw(st.one_of(st.just(len(topic)), st.just(len(topic)), st.integers(0, 0xFFFF)))
    body = struct.pack("!H", topic_length) + topic
    if qos:
        body += struct.pack("!H", draw(st.one_of(st.just(0), st.integers(1, 0xFFFF))))
    if v5:
        body += draw(property_blocks)
    body += draw(payloads)
    remaining: bytes = draw(
        st.one_of(
            st.just(variable_byte_integer(len(body))),
            st.just(variable_byte_integer(len(body))),
            st.just(non_minimal(len(body))),
            st.just(b"\x80\x80\x80\x80"),  # longer than MQTT allows, whatever follows
            st.integers(0, MAX_REMAINING_LENGTH).map(variable_byte_integer),
            st.integers(0, 2**35).map(variable_byte_integer),
        )
    )
    packet = bytes([first]) + remaining + body
    kept: int = draw(st.one_of(st.just(len(packet)), st.integers(0, len(packet))))
    return packet[:kept]


other_packets = st.builds(
    lambda first, body: bytes([first]) + variable_byte_integer(len(body)) + body,
    st.integers(0, 255).filter(lambda first: first & 0xF0 != PUBLISH),
    st.binary(max_size=6),
)


def streams(v5: bool) -> st.SearchStrategy[bytes]:
    packets = st.one_of(publish_packets(v5), publish_packets(v5), other_packets)
    return st.one_of(
        st.lists(packets, min_size=1, max_size=4).map(b"".join),
        st.binary(min_size=1, max_size=40).map(lambda noise: bytes([PUBLISH]) + noise),
    )


reads = st.one_of(st.just([READ_CHUNK_BYTES]), st.lists(st.integers(1, 24), min_size=1, max_size=6))
"""How the bytes arrive: all at once, or in reads of these sizes, repeated."""


class ScriptedSocket:
    """Gives `data` in reads of the sizes given, in turn, then reads as closed; keeps what is
    sent."""

    def __init__(self, data: bytes, read_sizes: list[int]) -> None:
        self.data = data
        self.position = 0
        self.read_sizes = cycle(read_sizes)
        self.sent = bytearray()

    def recv(self, bufsize: int) -> bytes:
        size = min(bufsize, next(self.read_sizes))
        chunk = self.data[self.position : self.position + size]
        self.position += len(chunk)
        return chunk

    def send(self, data: bytes) -> int:
        self.sent += data
        return len(data)

    def close(self) -> None:
        pass


@dataclass
class Outcome:
    """What a client made of a stream."""

    events: list[Event] = field(default_factory=list)
    sent: bytes = b""
    ended: str = ""
    """How reading ended: a paho error code's name, or the exception raised."""


def _protocol(v5: bool) -> MQTTProtocolVersion:
    return MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311


def _paho_event(message: mqtt.MQTTMessage) -> Event:
    found = message.properties.json() if message.properties is not None else {}
    topic = bytes(message._topic).decode("utf-8", "replace")  # noqa: SLF001  (.topic may raise)
    return topic, bytes(message.payload), message.mid, message.qos, bool(message.retain), found


def _bulk_event(topic: str, payload: bytes, mid: int, qos: int, retain: bool, raw: bytes) -> Event:
    try:
        found: Any = decode_properties(raw)
    except MalformedPacket:
        found = UNDECODABLE
    return topic, payload, mid, qos, retain, found


def _read_all(client: mqtt.Client, sock: ScriptedSocket, events: list[Event]) -> Outcome:
    """Read the whole stream, packet by packet, as the client's read loop does."""
    client.on_message = lambda client, userdata, message: events.append(_paho_event(message))
    client._sock = sock  # type: ignore[assignment]  # noqa: SLF001
    # Each read takes at least one byte or ends the stream: more calls than bytes is a hang.
    budget = 2 * len(sock.data) + 4
    rc = MQTTErrorCode.MQTT_ERR_SUCCESS
    try:
        while rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN):
            assert budget > 0, f"no progress at byte {sock.position} of {len(sock.data)}"
            budget -= 1
            rc = client._packet_read()  # noqa: SLF001
    except Exception as error:  # paho's own decoder may raise: recorded, compared
        return Outcome(events, bytes(sock.sent), f"raised {type(error).__name__}: {error}")
    return Outcome(events, bytes(sock.sent), rc.name)


def through_paho(stream: bytes, reads: list[int], v5: bool) -> Outcome:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fuzz", protocol=_protocol(v5))
    return _read_all(client, ScriptedSocket(stream, reads), [])


def through_bulk(stream: bytes, reads: list[int], v5: bool) -> Outcome:
    events: list[Event] = []
    sink: Callable[..., None] = lambda *message: events.append(_bulk_event(*message))  # noqa: E731
    client = BulkClient(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id="fuzz",
        protocol=_protocol(v5),
        sink=sink,
    )
    return _read_all(client, ScriptedSocket(stream, reads), events)


def check_agreement(stream: bytes, reads: list[int], v5: bool) -> None:
    bulk = through_bulk(stream, reads, v5)
    assert not bulk.ended.startswith("raised"), bulk.ended
    paho = through_paho(stream, reads, v5)
    if (bulk.ended, paho.ended) == ("MQTT_ERR_PROTOCOL", "MQTT_ERR_CONN_LOST"):
        # paho refuses a remaining length that is too long one byte later: give it that byte.
        paho = through_paho(stream + b"\x01", reads, v5)
    lazily_refused = [n for n, event in enumerate(bulk.events) if event[5] == UNDECODABLE]
    if lazily_refused:
        # paho refuses the packet (or reads its properties on into the payload); up to it, the
        # two agree message for message.
        first = lazily_refused[0]
        assert bulk.events[:first] == paho.events[:first]
        return
    assert bulk == paho


@seed(FUZZ_SEED)
@FUZZ
@given(stream=streams(v5=True), reads=reads)
def test_mqtt5_streams_decode_as_paho_decodes_them(stream: bytes, reads: list[int]) -> None:
    check_agreement(stream, reads, v5=True)


@seed(FUZZ_SEED)
@FUZZ
@given(stream=streams(v5=False), reads=reads)
def test_mqtt311_streams_decode_as_paho_decodes_them(stream: bytes, reads: list[int]) -> None:
    check_agreement(stream, reads, v5=False)


# What the fuzzing found, each kept as a test of its own.


@pytest.mark.parametrize("command", [0xC0, 0xD0], ids=["PINGREQ", "PINGRESP"])
def test_a_ping_packet_with_a_body_is_a_protocol_error_as_in_paho(command: int) -> None:
    stream = bytes([command, 1, 0])
    bulk = through_bulk(stream, [READ_CHUNK_BYTES], v5=True)
    assert bulk == through_paho(stream, [READ_CHUNK_BYTES], v5=True)
    assert (bulk.ended, bulk.sent) == ("MQTT_ERR_PROTOCOL", b"")  # no PINGRESP sent back


@pytest.mark.parametrize(
    "block",
    [
        b"\x02\x00\x00",  # property 0 does not exist (KeyError inside paho)
        b"\x01\x01",  # a Payload Format Indicator without its byte (IndexError)
        b"\x02\x23\x00",  # a Topic Alias cut short (struct.error)
        b"\x04\x03\x00\x01\xff",  # a Content Type that is not UTF-8 (UnicodeDecodeError)
        b"\x04\x01\x00\x01\x01",  # the same property twice (MQTTException)
        b"\x03\x03\x00\x05",  # a string longer than the block (MalformedPacket already)
    ],
)
def test_a_malformed_property_block_raises_malformed_packet_and_nothing_else(block: bytes) -> None:
    with pytest.raises(MalformedPacket) as raised:
        decode_properties(block)
    assert "\\x" not in str(raised.value)  # says what is wrong, not the bytes


def test_a_message_whose_properties_cannot_be_decoded_still_gets_its_dead_letter() -> None:
    """The bulk path passes a malformed property block on undecoded; the letter that needs it
    must be written, not raise in the bridge's loop (the message would come back forever)."""
    routes = route_table("fuzz/")
    source = MqttSource(MqttSettings(), routes)
    source._on_bulk_message("elsewhere/x", b"{}", 7, 1, False, b"\x01\x01")  # noqa: SLF001

    verdict = Intake(routes, 1024).judge(source.take(1)[0].message)

    assert isinstance(verdict, DeadLetter)
    assert verdict.reason is Reason.NO_ROUTE
    assert verdict.properties == {
        UNDECODABLE_PROPERTIES: "malformed MQTT 5 properties (IndexError)"
    }


def test_a_remaining_length_too_long_is_refused_before_its_fifth_byte() -> None:
    stream = b"\x30\x80\x80\x80\x80"  # four bytes, each saying "more"
    assert through_bulk(stream, [1], v5=True).ended == "MQTT_ERR_PROTOCOL"
    assert through_paho(stream, [1], v5=True).ended == "MQTT_ERR_CONN_LOST"  # still waiting
    assert through_paho(stream + b"\x01", [1], v5=True).ended == "MQTT_ERR_PROTOCOL"


def test_a_qos1_publish_with_packet_id_0_is_delivered_and_acked_as_paho_does() -> None:
    """MQTT forbids packet id 0 at QoS 1; paho takes it, and so does the bulk path: refusing it
    would close the connection, and the broker would send it again on the next one."""
    stream = b"\x32\x07\x00\x01t\x00\x00\x00x"
    bulk = through_bulk(stream, [READ_CHUNK_BYTES], v5=True)
    assert bulk == through_paho(stream, [READ_CHUNK_BYTES], v5=True)
    assert bulk.events == [("t", b"x", 0, 1, False, {})]
    assert bulk.sent == b"\x40\x02\x00\x00"
