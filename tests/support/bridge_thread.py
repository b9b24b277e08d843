"""The real bridge (`build_bridge`, as `python -m bridge` wires it) in a thread of this process,
and an MQTT 5 publisher that sets user properties: for tests that look at the bridge's spans in
this process (test_bridge_tracing.py, test_tracing_end_to_end.py)."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from rig.processes import wait_for
from tests.conftest import checkin_tweet

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from bridge.loop import Bridge

WAIT_SECONDS = 30.0


@contextmanager
def running_bridge(tracing: TracerProvider | None) -> Iterator[Bridge]:
    """`python -m bridge`'s bridge, tracing to `tracing`, in a thread, on an MQTT session of its
    own; stopped (every message in hand delivered and its span ended) on leaving."""
    from bridge.__main__ import build_bridge
    from taskhub.settings import get_settings

    settings = get_settings()
    client_id = f"{settings.mqtt.client_id}-trace-{uuid.uuid4().hex[:8]}"
    mqtt_settings = settings.mqtt.model_copy(update={"client_id": client_id, "session_expiry": 60})
    bridge = build_bridge(settings.model_copy(update={"mqtt": mqtt_settings}), tracing)
    bridge.replica.claim()
    thread = threading.Thread(target=bridge.run, name="bridge", daemon=True)
    thread.start()
    try:
        wait_for(lambda: bridge.source.subscribed, WAIT_SECONDS, "the bridge to subscribe")
        yield bridge
    finally:
        bridge.request_stop()
        thread.join(timeout=WAIT_SECONDS)
        assert not thread.is_alive(), "the bridge did not stop"


def publish_checkins(checkins: dict[str, list[tuple[str, str]]], code: str = "abcd123") -> None:
    """Publish one check-in per tweet id, with these user properties, at QoS 1 over MQTT 5; each
    check-in's short link is `code` followed by its tweet id."""
    from taskhub.mqtt import new_client
    from taskhub.settings import get_settings

    settings = get_settings()
    client = new_client(settings.mqtt, f"trace-publisher-{uuid.uuid4().hex[:8]}", persistent=False)
    connected = threading.Event()

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, reason: Any, *_: Any) -> None:
        if not reason.is_failure:
            connected.set()

    client.on_connect = on_connect
    client.connect(settings.mqtt.host, settings.mqtt.port)
    client.loop_start()
    try:
        assert connected.wait(WAIT_SECONDS), "the publisher did not connect"
        for tweet_id, pairs in checkins.items():
            properties = Properties(PacketTypes.PUBLISH)
            if pairs:
                properties.UserProperty = pairs
            topic = f"{settings.topic_prefix}checkins/nyc/tweets"
            payload = json.dumps(checkin_tweet(tweet_id, f"{code}{tweet_id}"))
            client.publish(topic, payload, qos=1, properties=properties).wait_for_publish(
                WAIT_SECONDS
            )
    finally:
        client.disconnect()
        client.loop_stop()
