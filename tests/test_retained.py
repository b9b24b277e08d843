"""A retained message is enqueued once, when the bridge's session first subscribes; a restart that
resumes the session does not enqueue it again (MQTT 5 Retain Handling, and the RETAIN flag)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from rig.processes import BRIDGE_READY, Process, python_module, wait_for
from rig.servers import MosquittoServer
from taskhub.mqtt import connect_arguments, new_client
from taskhub.settings import MqttProtocol, get_settings
from tests.conftest import checkin_tweet
from tests.support.queues import queued_tweet_ids

pytestmark = pytest.mark.e2e

STARTS = 3
WAIT_SECONDS = 30


def _publish(port: int, tweet_id: str, *, retain: bool) -> None:
    settings = get_settings().mqtt.model_copy(update={"port": port})
    client = new_client(settings, f"publisher-{tweet_id}", persistent=False)
    client.connect(**connect_arguments(settings, persistent=False))
    client.loop_start()
    topic = get_settings().topic_prefix + "checkins/lisbon/tweets"
    payload = json.dumps(checkin_tweet(tweet_id, f"Code{tweet_id[-4:]}"))
    client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(WAIT_SECONDS)
    client.disconnect()
    client.loop_stop()


@pytest.mark.parametrize("protocol", [MqttProtocol.V5, MqttProtocol.V311])
def test_a_retained_message_is_enqueued_once_across_bridge_restarts(
    broker_redis: redis.Redis,
    log_dir: Path,
    private_mosquitto: MosquittoServer,
    protocol: MqttProtocol,
) -> None:
    _publish(private_mosquitto.port, "700000000000000001", retain=True)
    bridge = Process(
        "bridge",
        python_module("bridge"),
        log_dir,
        {
            "TASKHUB_MQTT__PORT": str(private_mosquitto.port),
            "TASKHUB_MQTT__PROTOCOL": protocol.value,
            "TASKHUB_MQTT__CLIENT_ID": f"{get_settings().mqtt.client_id}-retained",
        },
    )
    try:
        for start in range(STARTS):
            bridge.start()
            bridge.wait_output(BRIDGE_READY, timeout=WAIT_SECONDS, count=2)
            # A live message after the subscription: once it is queued, a retained copy sent for
            # this subscription (which comes first) would be queued too.
            marker = f"70000000000000010{start}"
            _publish(private_mosquitto.port, marker, retain=False)
            wait_for(
                lambda marker=marker: marker in queued_tweet_ids(broker_redis),  # type: ignore[misc]
                WAIT_SECONDS,
                f"live message {marker} queued",
            )
            assert bridge.terminate() == 0
    finally:
        bridge.kill()
    queued = queued_tweet_ids(broker_redis)
    assert queued.count("700000000000000001") == 1, queued
    if (
        protocol is MqttProtocol.V311
    ):  # no Retain Handling: the broker sends it, the bridge skips it
        assert bridge.output().count("retained_replays=1") == STARTS - 1
