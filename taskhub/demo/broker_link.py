"""The feed's hold on its broker: whether the connection is up, what still awaits the broker's
acknowledgement, and whether to stop; it reports each outage and each return in one stderr line.

paho-mqtt 2.2 (pinned) does the reconnecting (`loop_start`) and keeps every QoS 1/2 message the
broker has not acknowledged, whether it was in flight at the loss or refused with MQTT_ERR_NO_CONN
while down, and sends it again after the next CONNACK, in a clean session too (`reconnect` and
`_handle_connack` in paho's client.py). So the feed never publishes a message twice itself: it
waits for the connection, counts, and lets paho resend. A resent message may reach subscribers
twice (at least once); the bridge's idempotency key, the tweet id, absorbs that.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from taskhub.mqtt import reason_text

CANNOT_CONNECT = "cannot connect"
"""Why the broker is unreachable when paho's TCP connect fails (paho does not say why)."""


class Handed(Protocol):
    """What publish() returns: whether paho took the message."""

    rc: MQTTErrorCode


class MqttPublisher(Protocol):
    """The part of paho's client the link uses; tests drive the link through a fake."""

    on_connect: Any
    on_connect_fail: Any
    on_disconnect: Any
    on_publish: Any

    def publish(self, topic: str, payload: bytes, qos: int) -> Handed: ...


def report_to_stderr(line: str) -> None:
    # sys.stderr looked up now: a running progress bar swaps in its own, which keeps the bar whole.
    print(line, file=sys.stderr, flush=True)


class BrokerLink:
    """Publishes through a paho client and tracks what the broker has acknowledged.

    QoS 1 and 2 count as acknowledged at the PUBACK (PUBCOMP); QoS 0 is at most once and counts
    as soon as paho takes it, or as dropped if the connection was down.
    """

    def __init__(
        self,
        address: str,
        *,
        qos: int,
        report: Callable[[str], None] = report_to_stderr,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.address = address
        self.qos = qos
        self._report = report
        self._clock = clock
        # Reentrant: stop() runs in a signal handler, which may interrupt the main thread while it
        # holds this lock; a plain Lock would deadlock there.
        self._changed = threading.Condition(threading.RLock())
        self._connected = False
        self._ever_connected = False
        self._down_since: float | None = clock()
        self._down_reason: str | None = None
        self._stopping = False
        self._closing = False
        self._handed = 0
        self._acknowledged = 0
        self._dropped = 0

    @property
    def acknowledged(self) -> int:
        return self._acknowledged

    @property
    def unacknowledged(self) -> int:
        """Messages handed to paho that the broker has not acknowledged (QoS 0: dropped)."""
        with self._changed:
            return self._handed - self._acknowledged

    @property
    def stopping(self) -> bool:
        return self._stopping

    def attach(self, client: MqttPublisher) -> None:
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish

    def publish(self, client: MqttPublisher, topic: str, payload: bytes) -> None:
        with self._changed:
            self._handed += 1  # before paho has it, so its acknowledgement cannot come first
        # Not under our lock: paho calls on_publish holding its own, which publish() also takes.
        rc = client.publish(topic, payload, qos=self.qos).rc
        if rc == mqtt.MQTT_ERR_SUCCESS and self.qos == 0:
            self._settle(acknowledged=1)
        elif rc == mqtt.MQTT_ERR_NO_CONN and self.qos == 0:
            self._settle(dropped=1)
        elif rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            # MQTT_ERR_NO_CONN for QoS 1/2: paho keeps the message and sends it after the CONNACK.
            with self._changed:
                self._handed -= 1
            raise RuntimeError(f"paho refused a message: {mqtt.error_string(rc)}")

    def wait_ready(self, max_unacknowledged: int) -> bool:
        """Block while the broker is down or `max_unacknowledged` messages await it; False once
        the feed is stopping. No time limit: an outage of any length is waited out."""
        with self._changed:
            self._changed.wait_for(
                lambda: (
                    self._stopping
                    or (self._connected and self._handed - self._acknowledged < max_unacknowledged)
                )
            )
            return not self._stopping

    def pause(self, seconds: float) -> bool:
        """Sleep `seconds`, or less if the feed is stopped meanwhile; False once it is stopping."""
        with self._changed:
            self._changed.wait_for(lambda: self._stopping, timeout=seconds)
            return not self._stopping

    def wait_settled(self) -> bool:
        """Block until the broker has acknowledged every message, across outages; False if the
        feed is stopped first."""
        with self._changed:
            self._changed.wait_for(lambda: self._stopping or self._settled())
            return not self._stopping

    def linger(self, seconds: float) -> None:
        """After a stop: wait up to `seconds` for the acknowledgements still on their way, unless
        the broker is down and none can come."""
        with self._changed:
            self._changed.wait_for(lambda: self._settled() or not self._connected, seconds)

    def stop(self) -> None:
        """Ask every wait to return. Safe in a signal handler (see `_changed`)."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()

    def close(self) -> None:
        """Say that the coming disconnect is the feed's own, not an outage."""
        with self._changed:
            self._closing = True

    def _settled(self) -> bool:
        return self._acknowledged + self._dropped >= self._handed

    def _settle(self, *, acknowledged: int = 0, dropped: int = 0) -> None:
        with self._changed:
            self._acknowledged += acknowledged
            self._dropped += dropped
            self._changed.notify_all()

    def _went_down(self, why: str) -> None:
        with self._changed:
            self._connected = False
            if self._down_since is None:
                self._down_since = self._clock()
            # One line per outage; a refusal that differs from the last says what changed.
            if self._down_reason is None or why not in (self._down_reason, CANNOT_CONNECT):
                self._down_reason = why
                self._report(f"feed: broker unreachable at {self.address} ({why}), retrying")
            self._changed.notify_all()

    def _on_connect(
        self, client: MqttPublisher, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            self._went_down(f"refused: {reason_text(reason)}")
            return
        with self._changed:
            if self._down_reason is not None and self._down_since is not None:
                down = self._clock() - self._down_since
                if self._ever_connected:
                    # paho sends these again right after this callback returns.
                    resent = self._handed - self._acknowledged - self._dropped
                    noun = "message" if resent == 1 else "messages"
                    self._report(f"feed: reconnected after {down:.1f}s; {resent} {noun} resent")
                else:
                    self._report(f"feed: connected after {down:.1f}s")
            self._connected = True
            self._ever_connected = True
            self._down_since = None
            self._down_reason = None
            self._changed.notify_all()

    def _on_connect_fail(self, client: MqttPublisher, userdata: Any) -> None:
        self._went_down(CANNOT_CONNECT)

    def _on_disconnect(
        self, client: MqttPublisher, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if not self._closing:
            self._went_down(f"connection lost: {reason_text(reason)}")

    def _on_publish(
        self, client: MqttPublisher, userdata: Any, mid: int, reason: Any, properties: Any
    ) -> None:
        if self.qos > 0:  # QoS 0 is counted when handed over; paho reports it once written
            self._settle(acknowledged=1)
