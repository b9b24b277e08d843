"""A broker crash with a backlog: QoS 1 messages acked into an offline persistent session, then
Mosquitto SIGKILLed and restarted, and a count of what that session still delivers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from rig.servers import MosquittoServer
from taskhub.mqtt import connect_arguments, new_client
from taskhub.settings import MqttSettings

TOPIC = "crash/backlog"
MARKER = b"marker"
"""Published after the restart: the session delivers its queue in order, so once the marker
arrives everything the broker still held has arrived before it."""
WAIT_SECONDS = 30.0
"""Longest wait for a connection, a subscription, the acks or the delivery."""
SUBSCRIBER_ID = "crash-subscriber"
PAYLOAD_BYTES = 300
"""About one check-in tweet: the snapshot Mosquitto writes grows with what it queues."""
IN_FLIGHT = 1000
"""Unacked QoS 1 messages a client keeps in flight, as many as the repo's broker allows."""

OnMessage = Callable[[mqtt.Client, Any, mqtt.MQTTMessage], None]


@dataclass(frozen=True, slots=True)
class CrashOutcome:
    acked: int
    """Messages the broker acknowledged (PUBACK) before it was killed."""
    delivered: int
    """How many of them the session delivered after the restart."""
    publish_seconds: float
    """From the first publish to the last PUBACK."""

    @property
    def lost(self) -> int:
        return self.acked - self.delivered


@contextmanager
def connected(
    port: int, client_id: str, persistent: bool, on_message: OnMessage | None = None
) -> Iterator[mqtt.Client]:
    settings = MqttSettings(port=port)
    client = new_client(settings, client_id, persistent=persistent)
    connected = threading.Event()
    client.on_connect = lambda *args: connected.set()
    if on_message is not None:
        client.on_message = on_message  # before connecting: a session delivers at once
    client.max_inflight_messages_set(IN_FLIGHT)
    client.connect(**connect_arguments(settings, persistent=persistent))
    client.loop_start()
    try:
        if not connected.wait(WAIT_SECONDS):
            raise TimeoutError(f"{client_id} never connected to port {port}")
        yield client
    finally:
        client.disconnect()
        client.loop_stop()


def subscribe(client: mqtt.Client) -> None:
    subscribed = threading.Event()
    client.on_subscribe = lambda *args: subscribed.set()
    client.subscribe(TOPIC, qos=1)
    if not subscribed.wait(WAIT_SECONDS):
        raise TimeoutError(f"no SUBACK for {TOPIC}")


def publish_then_crash(
    broker: MosquittoServer, count: int, kill_after: float = 0.0
) -> CrashOutcome:
    """Queue `count` QoS 1 messages for an offline session, SIGKILL the broker `kill_after`
    seconds after the last PUBACK, restart it, and count what the session still delivers."""
    with connected(broker.port, SUBSCRIBER_ID, persistent=True) as subscriber:
        subscribe(subscriber)
    # The session survives the crash, so what is measured is the loss of messages, not of it.
    broker.save_database()

    acked = threading.Event()
    acks = 0

    def on_publish(*args: object) -> None:
        nonlocal acks
        acks += 1
        if acks == count:
            acked.set()

    with connected(broker.port, "crash-publisher", persistent=False) as publisher:
        publisher.on_publish = on_publish
        started = time.perf_counter()
        for n in range(count):
            publisher.publish(TOPIC, numbered(n), qos=1)
        if not acked.wait(WAIT_SECONDS + count / 100):
            raise TimeoutError(f"the broker acked {acks} of {count} messages")
        publish_seconds = time.perf_counter() - started
        if kill_after:
            time.sleep(kill_after)  # the loss window being measured, not a synchronisation
        broker.kill()
    broker.start()
    return CrashOutcome(count, len(_still_delivered(broker)), publish_seconds)


def numbered(n: int) -> bytes:
    """Message `n`, padded to PAYLOAD_BYTES; `int()` reads the number back."""
    return str(n).ljust(PAYLOAD_BYTES).encode()


def _still_delivered(broker: MosquittoServer) -> set[int]:
    received: set[int] = set()
    marker = threading.Event()

    def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.payload == MARKER:
            marker.set()
        else:
            received.add(int(message.payload))

    with connected(broker.port, SUBSCRIBER_ID, True, on_message) as subscriber:
        subscribe(subscriber)  # as the bridge does on every connect
        with connected(broker.port, "crash-marker", persistent=False) as publisher:
            publisher.publish(TOPIC, MARKER, qos=1).wait_for_publish(WAIT_SECONDS)
        if not marker.wait(WAIT_SECONDS):
            raise TimeoutError("the marker published after the restart never arrived")
    return received
