"""The contestants that drain an MQTT session into Redis: a raw subscriber (the ceiling), a naive
bridge (paho's `on_message` calling Celery's `send_task`), and taskhub's bridge as it is run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from bench.harness import Stage
from taskhub.mqtt import connect_arguments, new_client
from taskhub.settings import MqttSettings

MessageHandler = Callable[[mqtt.MQTTMessage], None]


def mqtt_settings(found: Stage) -> MqttSettings:
    return MqttSettings(port=found.mqtt_port)


class Subscriber:
    """A persistent-session MQTT 5 client that hands every message to `handle` on paho's thread;
    paho acks each one after `handle` returns."""

    def __init__(self, found: Stage, client_id: str, filters: list[tuple[str, int]]) -> None:
        self.settings = mqtt_settings(found)
        self.filters = filters
        self.client = new_client(self.settings, client_id, persistent=True)
        self.subscribed = threading.Event()
        self.client.on_connect = lambda client, *args: client.subscribe(self.filters)
        self.client.on_subscribe = lambda *args: self.subscribed.set()

    def start(self, handle: MessageHandler | None = None) -> Subscriber:
        if handle is not None:
            self.client.on_message = lambda client, userdata, message: handle(message)
        self.client.connect(**connect_arguments(self.settings, persistent=True))
        self.client.loop_start()
        if not self.subscribed.wait(timeout=30):
            raise TimeoutError("the benchmark's subscriber was not subscribed within 30s")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def open_session(found: Stage, client_id: str, filters: list[tuple[str, int]]) -> None:
    """Create (or keep) `client_id`'s persistent session subscribed to `filters`, then leave:
    the broker queues everything published there until the contestant drains it."""
    Subscriber(found, client_id, filters).start().stop()


def naive_handler(send_task: Callable[..., Any]) -> MessageHandler:
    """What a first bridge looks like: decode, then one `send_task` per message."""

    def handle(message: mqtt.MQTTMessage) -> None:
        city = message.topic.split("/")[-2]
        send_task(
            "tasks.checkins.resolve_checkin",
            args=(json.loads(message.payload),),
            kwargs={"city": city},
        )

    return handle


def start_bridge(
    found: Stage, client_id: str, log: Path, profile: Path | None
) -> subprocess.Popen[bytes]:
    """`python -m bridge` on this stage; under cProfile when `profile` names an output file."""
    import os

    argv = [sys.executable]
    if profile is not None:
        argv += ["-m", "cProfile", "-o", str(profile)]
    argv += ["-m", "bridge"]
    with log.open("ab") as out:
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **found.env(client_id)}
        )
