"""`taskhub.request` and `taskhub request` against a small MQTT 5 responder on the real Mosquitto:
the reply with the request's Correlation Data is the answer, others are ignored, and no reply
ends in a clean timeout (docs/requests.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from taskhub.replies import CONTENT_TYPE, STATUS_PROPERTY, ReplyStatus, error_document

pytestmark = pytest.mark.e2e

ECHO = "requests-test/echo"
"""Below the run's topic prefix: the responder answers requests here."""
SILENT = "requests-test/nobody"
EVIL_DETAIL = "bad \x1b[2J\u202e thing"


def _property(message: mqtt.MQTTMessage, name: str) -> Any:
    return getattr(message.properties, name, None)


@pytest.fixture
def responder(topic_prefix: str) -> Iterator[list[mqtt.MQTTMessage]]:
    """A paho MQTT 5 client that answers each request on ECHO: first a decoy reply with other
    Correlation Data, then the reply, `{"echo": payload}` (ok), or a FAILED one for a payload
    asking for it. Yields the requests it received."""
    from taskhub.mqtt import connect_arguments, new_client
    from taskhub.settings import MqttProtocol, get_settings

    settings = get_settings().mqtt.model_copy(update={"protocol": MqttProtocol.V5})
    received: list[mqtt.MQTTMessage] = []
    subscribed = threading.Event()

    def reply(
        client: mqtt.Client, to: mqtt.MQTTMessage, status: str, body: bytes, corr: bytes
    ) -> None:
        properties = Properties(PacketTypes.PUBLISH)
        properties.CorrelationData = corr
        properties.ContentType = CONTENT_TYPE
        properties.UserProperty = [(STATUS_PROPERTY, status)]
        client.publish(_property(to, "ResponseTopic"), body, qos=1, properties=properties)

    def on_message(client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        received.append(message)
        request = json.loads(message.payload)
        correlation = _property(message, "CorrelationData")
        reply(client, message, "ok", b'{"decoy": true}', b"not-" + correlation)
        if request.get("fail"):
            document = error_document("task_failed", EVIL_DETAIL, "t-1")
            reply(client, message, ReplyStatus.FAILED.value, document, correlation)
        else:
            reply(client, message, "ok", json.dumps({"echo": request}).encode(), correlation)

    client = new_client(settings, f"responder-{uuid.uuid4().hex[:8]}", persistent=False)
    client.on_message = on_message
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_connect = lambda c, *_: c.subscribe(topic_prefix + ECHO, qos=1)
    client.connect(**connect_arguments(settings, persistent=False))
    client.loop_start()
    try:
        assert subscribed.wait(10), "the responder did not subscribe"
        yield received
    finally:
        client.disconnect()
        client.loop_stop()


def test_a_request_returns_the_reply_with_its_correlation_data(
    responder: list[mqtt.MQTTMessage], topic_prefix: str
) -> None:
    import taskhub

    response = taskhub.request(ECHO, {"n": 1, "text": "Zürich"}, timeout=10)

    assert response.ok
    assert response.document == {"echo": {"n": 1, "text": "Zürich"}}
    assert (STATUS_PROPERTY, "ok") in response.properties
    assert response.topic.startswith(f"{topic_prefix}replies/")
    (sent,) = responder
    assert sent.topic == topic_prefix + ECHO
    assert sent.qos == 1
    assert _property(sent, "ContentType") == CONTENT_TYPE
    assert _property(sent, "ResponseTopic") == response.topic


def test_a_failed_reply_is_returned_with_its_error(responder: list[mqtt.MQTTMessage]) -> None:
    import taskhub

    response = taskhub.request(ECHO, {"fail": True}, timeout=10)

    assert response.status is ReplyStatus.FAILED
    assert not response.ok
    assert response.error == {"reason": "task_failed", "detail": EVIL_DETAIL, "task_id": "t-1"}


def test_no_reply_times_out_cleanly() -> None:
    import taskhub
    from taskhub.requests import ReplyTimeout

    started = time.monotonic()
    with pytest.raises(ReplyTimeout, match=r"no reply in 0\.5 s"):
        taskhub.request(SILENT, {"n": 1}, timeout=0.5)
    assert time.monotonic() - started < 3


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taskhub.cli", "request", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TTY_COMPATIBLE": "0"},
    )


@pytest.mark.usefixtures("responder")
def test_the_command_prints_the_reply_and_exits_by_its_status() -> None:
    done = _cli(ECHO, '{"n": 2}', "--timeout", "10")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"echo": {"n": 2}}

    failed = _cli(ECHO, '{"fail": true}', "--timeout", "10")
    assert failed.returncode == 1
    assert json.loads(failed.stdout)["error"]["reason"] == "task_failed"
    # One line, with the detail's control characters shown, never obeyed.
    assert failed.stderr.splitlines()[-1] == (
        "taskhub request: failed: task_failed: bad \\x1b[2J\\u202e thing"
    )
    assert "\x1b" not in failed.stdout + failed.stderr


def test_the_command_says_when_no_reply_came() -> None:
    done = _cli(SILENT, "{}", "--timeout", "0.5")
    assert done.returncode == 3
    assert done.stdout == ""
    assert done.stderr.splitlines()[-1] == "taskhub request: no reply in 0.5 s"

    bad = _cli(SILENT, "{not json")
    assert bad.returncode != 0
    assert "the payload is not JSON" in bad.stderr
