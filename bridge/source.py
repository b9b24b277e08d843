"""The MQTT side of the bridge: a persistent-session subscription, driven by the bridge's own loop.

paho runs no thread here. The bridge calls `pump()` to service the connection and takes messages
from `received` only while it has room. The socket is read even while the bridge takes nothing, so
PINGRESP and CONNACK are never stuck behind waiting PUBLISH packets. Messages past
`MqttSettings.read_ahead` are shed unacked (the broker keeps them in flight), and once the bridge
has taken everything before them it reconnects, so the broker sends them again: memory stays bounded
whatever the broker sends (Mosquitto 2.0 sends past Receive Maximum). Each message remembers the
connection it came on and is never acked on a later one (the broker redelivers it there instead).
"""

from __future__ import annotations

import functools
import logging
import select
import ssl
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from bridge import trace_context
from bridge.backoff import Backoff
from bridge.bulk_client import BulkClient, decode_properties
from bridge.publish_time import from_properties, from_raw_properties
from bridge.reply_address import from_properties as reply_from_properties
from bridge.reply_address import from_raw_properties as reply_from_raw_properties
from taskhub.intake import RawMessage
from taskhub.mqtt import connect_arguments, new_client, reason_text, session_ending_properties
from taskhub.replies import CONTENT_TYPE, STATUS_PROPERTY, Reply
from taskhub.routes import RouteTable
from taskhub.settings import MqttProtocol, MqttSettings
from taskhub.topics import SHARE_PREFIX

log = logging.getLogger("taskhub.bridge.mqtt")

SESSION_TAKEN_OVER = 0x8E
"""MQTT 5 DISCONNECT reason: another connection took this client id's session."""
CLOSE_TIMEOUT_SECONDS = 5.0
"""At shutdown, how long to wait for the acks to be written and read by the broker."""
UNDECODABLE_PROPERTIES = "undecodable"
"""A dead letter's only property when its message's MQTT 5 properties could not be decoded."""


@dataclass(frozen=True, slots=True)
class Received:
    message: RawMessage
    mid: int
    qos: int
    connection: int
    retained_replay: bool = False
    """A retained message the broker sent again because a subscription the session already held
    was made again: acked in its turn, never enqueued (it was, when the subscription was new)."""
    read_at: float = 0.0
    """When the bridge read it from the socket (monotonic; one reading per socket read)."""
    sent_at: float | None = None
    """Its publish time from its MQTT 5 user property `sent_at` (epoch seconds), if it has one."""


def _properties_of(message: mqtt.MQTTMessage) -> dict[str, Any]:
    """`message`'s MQTT 5 properties, read only when a dead letter needs them."""
    properties = getattr(message, "properties", None)
    if properties is None:
        return {}
    found = properties.json() if hasattr(properties, "json") else {}
    return {key: value for key, value in found.items() if value not in (None, [], "")}


def _reply_properties(reply: Reply) -> Properties:
    """A reply's MQTT 5 properties: Correlation Data, Content Type, and its status and other user
    properties."""
    properties = Properties(PacketTypes.PUBLISH)
    if reply.address.correlation is not None:
        properties.CorrelationData = reply.address.correlation
    properties.ContentType = CONTENT_TYPE
    properties.UserProperty = [(STATUS_PROPERTY, reply.status.value), *reply.user_properties]
    return properties


def _letter_properties(raw: bytes) -> dict[str, Any]:
    """A bulk-path message's MQTT 5 properties, decoded only when a dead letter needs them.

    The bulk path takes a property block as it comes, so one that cannot be decoded (a broker let
    it through) shows up here; the letter then says why instead of the bridge stopping on it. The
    bytes are left out: they may hold a secret, which redaction only finds in decoded properties.
    """
    try:
        return decode_properties(raw)
    except MalformedPacket as error:
        return {UNDECODABLE_PROPERTIES: str(error)}


class MqttSource:
    """Subscribes every route and collects received messages in arrival order."""

    def __init__(self, settings: MqttSettings, routes: RouteTable, *, traced: bool = False) -> None:
        """`traced`: read each message's trace context (bridge/trace_context.py)."""
        self.settings = settings
        self.traced = traced
        self.client: BulkClient = new_client(  # type: ignore[assignment]
            settings,
            settings.client_id,
            persistent=True,
            manual_ack=True,
            client_class=functools.partial(BulkClient, sink=self._on_bulk_message),
        )
        self.subscriptions = [
            (self._filter_for(topic_filter), qos)
            for topic_filter, qos in routes.subscriptions(settings.qos)
        ]
        self.received: deque[Received] = deque()
        """Messages read and not yet taken by the bridge, oldest first."""
        self.shed = 0
        """Messages read past `read_ahead` on this connection and dropped unacked."""
        self._closing = False
        self.connection = 0
        self.connected = False
        self.subscribed = False
        """The broker granted every subscription on this connection."""
        self.subscribe_refused: list[str] = []
        """Topic filters the broker refused on this connection."""
        self._read_at = 0.0
        self.session_present = False
        self.leaving = False
        """Unsubscribing for good: a replica leaving its share group."""
        self.unsubscribed = False
        """The broker confirmed the unsubscribe: every message it sent before is read."""
        self.messages_read = 0
        self._drain_mark: int | None = None
        self._reconnect = Backoff(settings.reconnect_min_delay, settings.reconnect_max_delay)
        self._last_failure: str | None = None
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_unsubscribe = self._on_unsubscribe
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self._replies_out: set[int] = set()
        """Packet ids of replies published and not yet acknowledged."""
        self._replies_acked: list[int] = []

    def _filter_for(self, topic_filter: str) -> str:
        group = self.settings.share_group
        return f"{SHARE_PREFIX}{group}/{topic_filter}" if group else topic_filter

    def pump(self, timeout: float) -> None:
        """Service the connection once: connect if due, read what has come (control packets and
        messages alike), send what is queued (acks first of all), keep the session alive. Waits at
        most `timeout`.
        """
        sock = self.client.socket()
        if sock is None:
            self._maybe_reconnect(timeout)
            return
        readable = [sock]
        writable = [sock] if self.client.want_write() else []
        buffered = bool(readable) and self.client.buffered_packet()
        pending_tls = isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
        if buffered:
            readable = [sock]
        elif not pending_tls and (readable or writable or timeout > 0):
            try:
                readable, writable, _ = select.select(readable, writable, [], timeout)
            except (OSError, ValueError):
                readable, writable = [], []
        if readable or pending_tls:
            self._read_at = time.monotonic()
            self._read(self.settings.read_ahead)
        if self.client.want_write():
            self.client.loop_write()
        self.client.loop_misc()

    def _read(self, limit: int) -> None:
        """Read up to `limit` packets, while they keep coming."""
        if self.client.read_packets(limit) == mqtt.MQTT_ERR_SUCCESS:
            while self.client.buffered_packet():  # whole packets left over from the last recv
                if self.client.read_packets(limit) != mqtt.MQTT_ERR_SUCCESS:
                    return

    def take(self, limit: int) -> list[Received]:
        """Up to `limit` received messages, oldest first, for the bridge to judge and deliver."""
        count = min(limit, len(self.received))
        return [self.received.popleft() for _ in range(count)]

    def more_waiting(self) -> bool:
        """Whether more messages are waiting, received or still on the socket."""
        return bool(self.received) or self._socket_has_more()

    def _socket_has_more(self) -> bool:
        sock = self.client.socket()
        if sock is None:
            return False
        if self.client.buffered_packet():
            return True
        if isinstance(sock, ssl.SSLSocket) and sock.pending() > 0:
            return True
        try:
            return bool(select.select([sock], [], [], 0)[0])
        except (OSError, ValueError):
            return False

    def flush(self, timeout: float) -> None:
        """Send everything queued (acks) within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while self.client.want_write() and time.monotonic() < deadline:
            self.pump(timeout=0.05)

    def shed_and_drained(self) -> bool:
        """Whether messages were shed on this connection and everything read before them has
        been taken: time to reconnect and have the broker send them again."""
        return self.connected and self.shed > 0 and not self.received

    def reconnect_to_collect_shed(self) -> None:
        """Reconnect on purpose: the broker resends the shed messages, still unacked, in order."""
        log.info(
            "reconnecting to mqtt so the broker sends again %d messages shed while the bridge "
            "was full (TASKHUB_MQTT__READ_AHEAD=%d)",
            self.shed,
            self.settings.read_ahead,
        )
        self.close()
        self._reconnect.succeeded()

    def leave(self) -> None:
        """Unsubscribe every route for good, so the broker sends this replica's share of the
        group's messages to the others from now on; close(end_session=True) then ends it."""
        self.leaving = True
        if self.connected:
            self._unsubscribe()

    def drained(self) -> bool:
        """Whether a leaving replica's session holds nothing more: unsubscribed, everything read
        taken, the acks written, and a PINGRESP back with no message read since its PINGREQ.

        Mosquitto still sends what it had queued for the session after the UNSUBACK, as each ack
        frees an in-flight slot, and it handles the PUBACKs before the PINGREQ that follows them:
        a quiet ping round trip means the queue is empty. (The review's chaos run lost 6 of a
        leaving replica's messages when its session ended before this.)
        """
        if not (self.connected and self.unsubscribed) or self.received:
            self._drain_mark = None
            return False
        if self._drain_mark is None:
            if self.client.want_write():
                return False
            self._drain_mark = self.messages_read
            self.client.ping()
            return False
        if not self.client.ping_answered():
            return False
        if self.messages_read == self._drain_mark:
            return True
        self._drain_mark = None
        return False

    def _unsubscribe(self) -> None:
        self.unsubscribed = False
        self.client.unsubscribe([topic_filter for topic_filter, _ in self.subscriptions])

    def _on_unsubscribe(self, client: mqtt.Client, *args: Any) -> None:
        # UNSUBACK follows every PUBLISH the broker sent before it on this connection.
        self.unsubscribed = True

    def is_current(self, received: Received) -> bool:
        return self.connected and received.connection == self.connection

    def ack(self, batch: list[Received]) -> None:
        """Ack a batch in its order, in one write, except messages whose connection is gone (the
        broker will redeliver those)."""
        for received in batch:
            if received.qos > 0 and self.is_current(received):
                self.client.ack(received.mid, received.qos)
        self.client.send_acks()

    def publish(self, topic: str, payload: str) -> None:
        """Publish at QoS 1 on the bridge's own connection; paho resends it until acked."""
        if self.connected:
            self.client.publish(topic, payload, qos=1)

    def publish_reply(self, reply: Reply) -> int | None:
        """Publish a reply at QoS 1 with its MQTT 5 properties; its packet id, which
        `completed_replies` names once the broker acknowledged it (paho resends it on each
        reconnect until then), or None when not connected. ValueError for a topic or payload
        MQTT refuses."""
        if not self.connected:
            return None
        info = self.client.publish(
            reply.address.topic, reply.payload, qos=1, properties=_reply_properties(reply)
        )
        self._replies_out.add(info.mid)
        return info.mid

    def completed_replies(self) -> list[int]:
        """Packet ids of the replies the broker acknowledged since the last call."""
        if not self._replies_acked:
            return []
        acked, self._replies_acked = self._replies_acked, []
        return acked

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, properties: Any
    ) -> None:
        if mid not in self._replies_out:
            return  # a dead letter's copy (TASKHUB_BRIDGE__DEADLETTER_TOPIC)
        self._replies_out.discard(mid)
        if reason.is_failure:  # e.g. not authorized: publishing it again would change nothing
            log.warning("mqtt broker refused a reply (packet %d): %s", mid, reason_text(reason))
        self._replies_acked.append(mid)

    def close(self, *, end_session: bool = False) -> None:
        """Send the acks already given, wait until the broker has read them, then disconnect;
        the broker keeps the session, unless `end_session` (MQTT 5: its expiry becomes 0)."""
        self._closing = True
        self.flush(timeout=CLOSE_TIMEOUT_SECONDS)
        if self.connected:
            self.client.ping()
            deadline = time.monotonic() + CLOSE_TIMEOUT_SECONDS
            while not self.client.ping_answered() and time.monotonic() < deadline:
                self.pump(timeout=0.05)
        if self.client.socket() is not None:
            ending = session_ending_properties(self.settings) if end_session else None
            self.client.disconnect(properties=ending)
            self.flush(timeout=CLOSE_TIMEOUT_SECONDS)
        self._closing = False

    def _maybe_reconnect(self, timeout: float) -> None:
        if not self._reconnect.ready():
            time.sleep(min(timeout, self._reconnect.remaining()))
            return
        if self.connection == 0 and self._last_failure is None:
            log.info(
                "connecting to mqtt://%s:%d as %s (MQTT %s, persistent session)",
                self.settings.host,
                self.settings.port,
                self.settings.client_id,
                self.settings.protocol.value,
            )
        try:
            self.client.connect(**connect_arguments(self.settings, persistent=True))
        except (OSError, ssl.SSLError) as error:
            self._connect_failed(f"{type(error).__name__}: {error}")

    def _connect_failed(self, why: str) -> None:
        if why != self._last_failure:
            log.error(
                "mqtt connection to %s:%d failed: %s (retrying with backoff up to %gs)",
                self.settings.host,
                self.settings.port,
                why,
                self.settings.reconnect_max_delay,
            )
            self._last_failure = why
        self._reconnect.failed()

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        if reason.is_failure:
            self._connect_failed(f"refused: {reason_text(reason)}")
            return
        self._last_failure = None
        self._reconnect.succeeded()
        self.client.set_no_delay()
        self.connection += 1
        self.connected = True
        self.subscribed = False
        self.subscribe_refused = []
        self.shed = 0
        self.session_present = bool(flags.session_present)
        log.info("mqtt connected (session present: %s)", flags.session_present)
        if self.leaving:
            self._unsubscribe()
        elif self.settings.protocol is MqttProtocol.V5:
            # Retain Handling 1: retained messages only for a subscription the session lacks.
            options = [
                (f, SubscribeOptions(qos=q, retainHandling=1)) for f, q in self.subscriptions
            ]
            client.subscribe(options)
        else:
            client.subscribe(self.subscriptions)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        if (
            self.connected
            and not self._closing
            and getattr(reason, "value", 0) == SESSION_TAKEN_OVER
        ):
            log.error(
                "mqtt session taken over: another client connected as %s; two bridges on one "
                "client id take the session from each other; give each replica its own id",
                self.settings.client_id,
            )
            self._reconnect.wait()
        elif self.connected and not self._closing:
            log.warning("mqtt disconnected: %s", reason_text(reason))
            self._reconnect.wait()
        self.connected = False
        self.subscribed = False

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Any,
    ) -> None:
        refused = []
        for (topic_filter, _), granted in zip(self.subscriptions, reason_codes, strict=False):
            if granted.is_failure:
                refused.append(topic_filter)
                log.error("mqtt subscription to %s refused: %s", topic_filter, reason_text(granted))
            else:
                log.info("mqtt subscribed to %s (QoS %d)", topic_filter, granted.value)
        self.subscribe_refused = refused
        self.subscribed = not refused

    def _on_bulk_message(
        self, topic: str, payload: bytes, mid: int, qos: int, retain: bool, properties: bytes
    ) -> None:
        """A QoS 0/1 message from the bulk receive path (BulkClient's sink). Not paho's
        `on_publish`, which reports an outgoing publish completed."""
        if self._shedding():
            return
        if properties:
            lazy: Any = functools.partial(_letter_properties, properties)
            sent_at = from_raw_properties(properties)
            reply = reply_from_raw_properties(properties)
            trace = trace_context.from_raw_properties(properties) if self.traced else None
        else:
            lazy, sent_at, reply, trace = dict, None, None, None
        raw = RawMessage(topic, payload, lazy, reply, trace)
        retained_replay = self._is_retained_replay(retain)
        self.received.append(
            Received(raw, mid, qos, self.connection, retained_replay, self._read_at, sent_at)
        )

    def _shedding(self) -> bool:
        """Count a message read, and say whether it is shed (left unacked past the read-ahead).

        Once one is shed, every later one is too, so the acks given stay a prefix of what
        arrived and the broker resends the rest, in order, after the reconnect.
        """
        self.messages_read += 1
        if self.shed or len(self.received) >= self.settings.read_ahead:
            self.shed += 1
        return self.shed > 0

    def _is_retained_replay(self, retain: bool) -> bool:
        """Whether a message is a retained one sent again for a re-made subscription.

        A broker sets RETAIN on a delivery only when a subscription is made (MQTT 3.1.1 3.3.1.3,
        MQTT 5 without Retain As Published); with the session present, every subscription the
        bridge makes already existed, so such a message was enqueued when it was new.
        """
        return retain and self.session_present

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        """A QoS 2 message, after paho's PUBREC/PUBREL exchange."""
        # MQTT requires UTF-8 topic names; a broker that lets a bad one through must not stop us.
        try:
            topic = message.topic
        except UnicodeDecodeError:
            # paho keeps the raw bytes only in `_topic`; `.topic` is what raised.
            topic = bytes(message._topic).decode("utf-8", "replace")  # noqa: SLF001
        if self._shedding():
            return
        properties = _properties_of(message)
        reply = reply_from_properties(getattr(message, "properties", None))
        trace = trace_context.from_properties(properties) if self.traced else None
        raw = RawMessage(topic, bytes(message.payload), properties, reply, trace)
        retained_replay = self._is_retained_replay(bool(message.retain))
        self.received.append(
            Received(
                raw,
                message.mid,
                message.qos,
                self.connection,
                retained_replay,
                self._read_at,
                from_properties(properties),
            )
        )
