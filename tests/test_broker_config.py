"""The repo's mosquitto.conf keeps what the bridge depends on: a persistent session's queued
messages survive a broker restart, and more than Mosquitto's default 1000 are kept.
"""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt

from taskhub.mqtt import connect_arguments, new_client
from taskhub.settings import MqttSettings
from tests.support.processes import wait_for
from tests.support.servers import MosquittoServer

QUEUED = 1500
"""More than Mosquitto's default max_queued_messages, which drops the rest."""


def _client(port: int, client_id: str, received: list[bytes] | None = None) -> mqtt.Client:
    settings = MqttSettings(port=port)
    client = new_client(settings, client_id, persistent=True)
    connected = threading.Event()
    client.on_connect = lambda *args: connected.set()
    if received is not None:
        client.on_message = lambda c, u, message: received.append(bytes(message.payload))
    client.connect(**connect_arguments(settings, persistent=True))
    client.loop_start()
    assert connected.wait(10)
    return client


def test_offline_session_keeps_its_queue_across_a_broker_restart(
    private_mosquitto: MosquittoServer,
) -> None:
    broker = private_mosquitto
    subscriber = _client(broker.port, "sleeper")
    subscribed = threading.Event()
    subscriber.on_subscribe = lambda *args: subscribed.set()
    subscriber.subscribe("q/#", qos=1)
    assert subscribed.wait(10)
    subscriber.disconnect()
    subscriber.loop_stop()

    publisher = _client(broker.port, "waker")
    infos = [publisher.publish("q/x", str(n).encode(), qos=1) for n in range(QUEUED)]
    for info in infos:
        info.wait_for_publish(timeout=30)
    publisher.disconnect()
    publisher.loop_stop()

    broker.stop()
    broker.start()

    received: list[bytes] = []
    again = _client(broker.port, "sleeper", received)
    try:
        wait_for(lambda: len(received) >= QUEUED, 30, f"{QUEUED} queued messages after restart")
    finally:
        again.disconnect()
        again.loop_stop()
    assert sorted(int(payload) for payload in received) == list(range(QUEUED))
