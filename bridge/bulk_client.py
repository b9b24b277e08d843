"""paho's MQTT client with a bulk receive path: the socket is read in large chunks, PUBLISH packets
are decoded here, and PUBACKs for a whole batch leave in one write.

paho reads every packet with three or more `recv` calls and builds an `MQTTMessage`, a lock and
(MQTT 5) a `Properties` object for each; that cost more than all of the bridge's own work per
message. paho still owns the connection: CONNECT, SUBSCRIBE, keepalive, QoS 2, TLS and every packet
other than a QoS 0/1 PUBLISH go through its own handlers, fed from the same buffer.
This leans on paho internals: `bridge.paho_internals.PAHO_INTERNALS` lists each with its reason,
and importing this module fails in one line when the installed paho lacks one. pyproject pins paho
to the minor versions tests/test_bulk_client.py has proven.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.exception import MalformedPacket, MQTTException
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.paho_internals import require_paho_internals

require_paho_internals()  # before anything below relies on them
_paho_clock = mqtt.time_func
"""paho's keepalive compares `_last_bytes_received` with this clock."""

READ_CHUNK_BYTES = 256 * 1024
"""How much one `recv` may bring in: hundreds of small PUBLISH packets at once."""
MAX_VARIABLE_BYTE_INTEGER_BYTES = 4
"""MQTT's Variable Byte Integers (Remaining Length, Property Length) are at most four bytes long;
more is a broken or hostile peer."""

_PUBLISH = 0x30
_PUBACK = 0x40
_PUBACK_HEADER = struct.Struct("!BBH")

PublishSink = Callable[[str, bytes, int, int, bool, bytes], None]
"""Receives (topic, payload, packet id, qos, retain flag, raw MQTT 5 properties) for each QoS 0/1
PUBLISH."""


class _Malformed(Exception):
    """A Variable Byte Integer longer than MQTT allows."""


def _variable_byte_integer(buffer: bytearray, index: int, end: int) -> tuple[int, int] | None:
    """The Variable Byte Integer at `buffer[index]`: (value, index after it), or None when it
    runs into `end` first; raises _Malformed when it is longer than MQTT allows."""
    value = 0
    for shift in range(0, 7 * MAX_VARIABLE_BYTE_INTEGER_BYTES, 7):
        if index >= end:
            return None
        byte = buffer[index]
        index += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, index
    raise _Malformed


_PROPERTY_ERRORS = (struct.error, IndexError, KeyError, ValueError, MQTTException)
"""What paho's property decoder raises on bytes that are not a property block (an unknown
identifier is a KeyError, a value cut short an IndexError or struct.error, a bad string a
ValueError)."""


def decode_properties(raw: bytes) -> dict[str, Any]:
    """A PUBLISH's MQTT 5 properties as paho names them; `raw` starts with their length.

    The bulk path hands properties on undecoded, so a malformed block is found here, not when it
    arrives: it raises MalformedPacket, and only that.
    """
    if not raw:
        return {}
    found: dict[str, Any] = unpack_properties(raw).json()
    return found


def properties_naming(raw: bytes, name: bytes) -> dict[str, Any] | None:
    """`raw` decoded, if its bytes hold `name` at all: decoding costs as much as the rest of a
    message's handling, so a block that cannot name it stays undecoded. None then, and for a
    malformed block (the message itself is judged, and its dead letter says why, elsewhere)."""
    if name not in raw:
        return None
    try:
        return decode_properties(raw)
    except MalformedPacket:
        return None


def unpack_properties(raw: bytes) -> Properties:
    """A PUBLISH's MQTT 5 properties as paho's object (binary values stay bytes); raises
    MalformedPacket, and only that, for bytes that are not a property block."""
    properties = Properties(PacketTypes.PUBLISH)
    try:
        properties.unpack(raw)
    except MalformedPacket:
        raise
    except _PROPERTY_ERRORS as error:
        # The type alone: a UnicodeDecodeError's text holds the bytes, which may be a secret.
        raise MalformedPacket(f"malformed MQTT 5 properties ({type(error).__name__})") from error
    return properties


class BulkClient(mqtt.Client):
    """A paho client whose QoS 0/1 PUBLISH packets go to `sink` instead of `on_message`.

    QoS 2 messages still arrive through paho's `on_message`, after its PUBREC/PUBREL exchange.
    Acks for QoS 1 messages are collected by `ack()` and sent together by `send_acks()`.
    """

    def __init__(self, *args: Any, sink: PublishSink, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sink = sink
        self._v5 = kwargs.get("protocol") == mqtt.MQTTv5
        self._rx = bytearray()
        self._rx_pos = 0
        self._acks = bytearray()

    # -- receiving ---------------------------------------------------------------------------

    def buffered_packet(self) -> bool:
        """Whether a whole packet is already buffered, so there is work without reading."""
        return self._next_packet_bounds() is not None

    def read_packets(self, limit: int) -> MQTTErrorCode:
        """Handle up to `limit` packets, reading the socket only when none is buffered.

        Whatever the broker sends, this raises nothing of its own: a malformed packet is
        MQTT_ERR_PROTOCOL and a closed connection MQTT_ERR_CONN_LOST, as paho's `loop_read` says
        (tests/test_fuzz_publish.py). Only the sink's and paho's callbacks' exceptions come through.
        """
        for _ in range(limit):
            if self._sock is None:
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            rc = self._packet_read()
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            if rc > 0:
                return self._loop_rc_handle(rc)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _packet_read(self) -> MQTTErrorCode:
        """Handle one packet: paho's contract, with the bytes taken from a shared buffer."""
        bounds = self._next_packet_bounds()
        if bounds is None:
            rc = self._fill()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return rc
            bounds = self._next_packet_bounds()
            if bounds is None:
                return MQTTErrorCode.MQTT_ERR_AGAIN
        if bounds[0] < 0:
            return MQTTErrorCode.MQTT_ERR_PROTOCOL
        body_start, end = bounds
        command = self._rx[self._rx_pos]
        self._rx_pos = end
        if command & 0xF0 == _PUBLISH and command & 0x06 in (0x00, 0x02):
            return self._handle_bulk_publish(command, body_start, end)
        return self._handle_with_paho(command, self._rx[body_start:end])

    def _next_packet_bounds(self) -> tuple[int, int] | None:
        """(body start, end) of the buffered packet at the read position, None when it is not
        all here yet, or (-1, -1) when its Remaining Length is malformed."""
        available = len(self._rx)
        try:
            found = _variable_byte_integer(self._rx, self._rx_pos + 1, available)
        except _Malformed:
            return (-1, -1)
        if found is None:
            return None
        length, body_start = found
        end = body_start + length
        return (body_start, end) if end <= available else None

    def _fill(self) -> MQTTErrorCode:
        """One `recv` into the buffer, after dropping what has been handled."""
        if self._rx_pos:
            del self._rx[: self._rx_pos]
            self._rx_pos = 0
        try:
            data = self._sock_recv(READ_CHUNK_BYTES)
        except BlockingIOError:
            return MQTTErrorCode.MQTT_ERR_AGAIN
        except OSError as error:
            self._easy_log(mqtt.MQTT_LOG_ERR, "failed to receive on socket: %s", error)
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        if not data:
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        self._rx += data
        with self._msgtime_mutex:
            self._last_bytes_received = _paho_clock()
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    # One inline pass over the packet, a return per outcome: the hot path, profiled.
    def _handle_bulk_publish(  # noqa: C901, PLR0911
        self, command: int, start: int, end: int
    ) -> MQTTErrorCode:
        rx = self._rx
        qos = (command >> 1) & 0x03
        cursor = start + 2
        if cursor > end:
            return MQTTErrorCode.MQTT_ERR_PROTOCOL
        topic_end = cursor + ((rx[start] << 8) | rx[start + 1])
        if topic_end > end:
            return MQTTErrorCode.MQTT_ERR_PROTOCOL
        topic_bytes = bytes(rx[cursor:topic_end])
        cursor = topic_end
        if not topic_bytes and not self._v5:
            return MQTTErrorCode.MQTT_ERR_PROTOCOL  # MQTT 3.1.1 forbids an empty topic
        mid = 0
        if qos:
            if cursor + 2 > end:
                return MQTTErrorCode.MQTT_ERR_PROTOCOL
            mid = (rx[cursor] << 8) | rx[cursor + 1]
            cursor += 2
        properties = b""
        if self._v5:
            try:
                found = _variable_byte_integer(rx, cursor, end)
            except _Malformed:
                found = None
            if found is None:
                return MQTTErrorCode.MQTT_ERR_PROTOCOL
            length, after = found
            if length:
                properties = bytes(rx[cursor : after + length])
            cursor = after + length
        if cursor > end:
            return MQTTErrorCode.MQTT_ERR_PROTOCOL
        try:
            topic = topic_bytes.decode("utf-8")
        except UnicodeDecodeError:
            # MQTT requires UTF-8 topic names; a broker that lets a bad one through must not
            # stop the bridge. The message is still handed on, to be refused with a reason.
            topic = topic_bytes.decode("utf-8", "replace")
        self._sink(topic, bytes(rx[cursor:end]), mid, qos, bool(command & 0x01), properties)
        if qos and not self._manual_ack:
            return self._send_puback(mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _handle_with_paho(self, command: int, body: bytearray) -> MQTTErrorCode:
        self._in_packet["command"] = command
        self._in_packet["packet"] = body
        self._in_packet["pos"] = 0
        self._in_packet["remaining_length"] = len(body)  # a PINGREQ/PINGRESP must have no body
        try:
            return self._packet_handle()
        except MalformedPacket as error:
            self._easy_log(mqtt.MQTT_LOG_DEBUG, "Received malformed packet: %s", error)
            return MQTTErrorCode.MQTT_ERR_PROTOCOL
        finally:
            self._in_packet["command"] = 0
            self._in_packet["packet"] = bytearray()
            self._in_packet["remaining_length"] = 0

    # -- acknowledging -----------------------------------------------------------------------

    def ack(self, mid: int, qos: int) -> MQTTErrorCode:
        """Collect a QoS 1 PUBACK for `send_acks`; QoS 2 goes through paho at once."""
        if self._manual_ack and qos == 1:
            self._acks += _PUBACK_HEADER.pack(_PUBACK, 2, mid)
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        return super().ack(mid, qos)

    def send_acks(self) -> None:
        """Queue every collected PUBACK as one write, in the order they were given."""
        if self._acks:
            acks, self._acks = bytes(self._acks), bytearray()
            self._packet_queue(_PUBACK, acks, 0, 0)

    def ping(self) -> None:
        """Send a PINGREQ: once its PINGRESP is back, the broker has read everything before it.

        Mosquitto can drop packets still unread when a client closes its socket, so acks sent
        just before a DISCONNECT may be lost (and their messages redelivered) without this.
        """
        self._send_pingreq()

    def ping_answered(self) -> bool:
        return self._ping_t == 0

    # -- the connection ----------------------------------------------------------------------

    def _sock_close(self) -> None:
        """Forget buffered bytes and unsent acks with the connection they belong to."""
        self._rx = bytearray()
        self._rx_pos = 0
        self._acks = bytearray()
        super()._sock_close()

    def set_no_delay(self) -> None:
        """Send small packets (acks) at once rather than waiting for Nagle's algorithm."""
        sock = self._sock
        if getattr(sock, "family", None) in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[union-attr]
