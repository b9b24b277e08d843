"""The MQTT side of the bridge: a persistent-session subscription whose messages wait in an inbox
until the bridge acks them, in the order they arrived.

paho's network thread only files messages; the bridge's own thread takes them in batches. Each
message remembers the connection it came on, and is never acked on a later one (the broker
redelivers it there instead).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from bridge.intake import RawMessage
from taskhub.mqtt import connect_async, new_client, reason_text
from taskhub.routes import RouteTable
from taskhub.settings import MqttProtocol, MqttSettings
from taskhub.topics import SHARE_PREFIX

log = logging.getLogger("taskhub.bridge.mqtt")


@dataclass(frozen=True, slots=True)
class Received:
    message: RawMessage
    mid: int
    qos: int
    connection: int


def _properties_of(message: mqtt.MQTTMessage) -> dict[str, Any]:
    properties = getattr(message, "properties", None)
    if properties is None:
        return {}
    found = properties.json() if hasattr(properties, "json") else {}
    return {key: value for key, value in found.items() if value not in (None, [], "")}


class MqttSource:
    """Subscribes every route and hands out received messages in arrival order."""

    def __init__(self, settings: MqttSettings, routes: RouteTable) -> None:
        self.settings = settings
        self.client = new_client(settings, settings.client_id, persistent=True, manual_ack=True)
        self.subscriptions = [
            (
                self._filter_for(route.pattern.mqtt_filter),
                route.qos if route.qos is not None else settings.qos,
            )
            for route in routes
        ]
        self.inbox: queue.SimpleQueue[Received] = queue.SimpleQueue()
        self.connection = 0
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self._last_failure: str | None = None
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _filter_for(self, topic_filter: str) -> str:
        group = self.settings.share_group
        return f"{SHARE_PREFIX}{group}/{topic_filter}" if group else topic_filter

    def start(self) -> None:
        log.info(
            "connecting to mqtt://%s:%d as %s (MQTT %s, persistent session)",
            self.settings.host,
            self.settings.port,
            self.settings.client_id,
            self.settings.protocol.value,
        )
        connect_async(self.client, self.settings, persistent=True)
        self.client.loop_start()

    def stop(self) -> None:
        """Disconnect after every ack already given has been sent; the session stays."""
        self.client.disconnect()
        self.client.loop_stop()

    def take(self, max_items: int, wait: float, linger: float) -> list[Received]:
        """Up to `max_items` messages: waits `wait`s for the first, `linger`s for more."""
        try:
            batch = [self.inbox.get(timeout=wait)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + linger
        while len(batch) < max_items:
            try:
                batch.append(self.inbox.get_nowait())
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    batch.append(self.inbox.get(timeout=remaining))
                except queue.Empty:
                    break
        return batch

    def is_current(self, received: Received) -> bool:
        return received.connection == self.connection and self.connected.is_set()

    def ack(self, received: Received) -> None:
        """Ack one message, unless its connection is gone (the broker will redeliver it)."""
        if received.qos > 0 and self.is_current(received):
            self.client.ack(received.mid, received.qos)

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        if reason.is_failure:
            text = reason_text(reason)
            if text != self._last_failure:
                log.error("mqtt connection refused: %s (retrying with backoff)", text)
                self._last_failure = text
            return
        self._last_failure = None
        self.connection += 1
        self.connected.set()
        log.info("mqtt connected (session present: %s)", flags.session_present)
        if self.settings.protocol is MqttProtocol.V5:
            client.subscribe([(f, SubscribeOptions(qos=q)) for f, q in self.subscriptions])
        else:
            client.subscribe(self.subscriptions)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        was_connected = self.connected.is_set()
        self.connected.clear()
        self.subscribed.clear()
        if was_connected:
            log.warning("mqtt disconnected: %s", reason_text(reason))

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Any,
    ) -> None:
        for (topic_filter, _), granted in zip(self.subscriptions, reason_codes, strict=False):
            if granted.is_failure:
                log.error("mqtt subscription to %s refused: %s", topic_filter, reason_text(granted))
            else:
                log.info("mqtt subscribed to %s (QoS %d)", topic_filter, granted.value)
        if not any(granted.is_failure for granted in reason_codes):
            self.subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        # MQTT requires UTF-8 topic names; a broker that lets a bad one through must not stop us.
        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = bytes(message._topic).decode("utf-8", "replace")
        raw = RawMessage(topic, bytes(message.payload), _properties_of(message))
        self.inbox.put(Received(raw, message.mid, message.qos, self.connection))
