"""Ask taskhub over MQTT 5 and wait for its answer: `taskhub.request(topic, payload)`.

The request goes to `{topic_prefix}{topic}` at QoS 1 with a Response Topic of its own,
`{topic_prefix}replies/<random id>` (inside the default TASKHUB_REPLIES__ALLOWED_TOPICS), and
random Correlation Data; the first reply there with the same Correlation Data is the answer.
Every reply is returned, a FAILED or REFUSED one too: it is an answer, with an error document
worth reading. No reply in time raises ReplyTimeout. (docs/requests.md)
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from taskhub.mqtt import connect_arguments, new_client, reason_text
from taskhub.replies import CONTENT_TYPE, STATUS_PROPERTY, ReplyStatus
from taskhub.settings import MqttProtocol, Settings, get_settings

REPLY_TOPIC_ROOT = "replies/"
"""Below the topic prefix: where private response topics are made (`replies/<random id>`)."""
CORRELATION_BYTES = 16


class RequestError(Exception):
    """A request got no usable answer."""


class ReplyTimeout(RequestError, TimeoutError):
    """No reply came in time: the request may still run (taskhub does not cancel it)."""


class BrokerUnavailable(RequestError, ConnectionError):
    """The MQTT broker could not be reached, or refused the connection, subscription or publish."""


class MalformedReply(RequestError, ValueError):
    """A reply with the request's Correlation Data but no valid taskhub-status or JSON payload."""


@dataclass(frozen=True, slots=True)
class Response:
    """A reply to a request."""

    status: ReplyStatus
    document: Any
    """The payload as JSON: the task's result (OK), or `{"error": {...}}` (FAILED, REFUSED)."""
    payload: bytes
    properties: tuple[tuple[str, str], ...]
    """The reply's user properties, taskhub-status among them."""
    topic: str
    """The private response topic it came on."""

    @property
    def ok(self) -> bool:
        return self.status is ReplyStatus.OK

    @property
    def error(self) -> dict[str, Any]:
        """The error document's `error` object (reason, detail, task_id); empty for OK."""
        error = self.document.get("error") if isinstance(self.document, dict) else None
        return error if isinstance(error, dict) and not self.ok else {}


def request(
    topic: str,
    payload: Any,
    timeout: float = 5.0,
    *,
    settings: Settings | None = None,
) -> Response:
    """Publish `payload` (JSON-encoded; bytes are sent as they are) to `{topic_prefix}{topic}`
    and wait up to `timeout` seconds, connecting included, for its reply.

    Always MQTT 5, whatever TASKHUB_MQTT__PROTOCOL says: MQTT 3.1.1 has no Response Topic.
    Raises ReplyTimeout, BrokerUnavailable or MalformedReply; returns every reply, whatever its
    status.
    """
    settings = settings or get_settings()
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    exchange = _Exchange(
        response_topic=f"{settings.topic_prefix}{REPLY_TOPIC_ROOT}{uuid.uuid4().hex}",
        correlation=secrets.token_bytes(CORRELATION_BYTES),
    )
    deadline = time.monotonic() + timeout
    mqtt_settings = settings.mqtt.model_copy(update={"protocol": MqttProtocol.V5})
    client = new_client(mqtt_settings, f"taskhub-request-{uuid.uuid4().hex}", persistent=False)
    client.on_connect = exchange.on_connect
    client.on_subscribe = exchange.on_subscribe
    client.on_message = exchange.on_message
    try:
        client.connect(**connect_arguments(mqtt_settings, persistent=False))
    except OSError as error:
        raise BrokerUnavailable(f"cannot reach MQTT {settings.mqtt.host}: {error}") from None
    client.loop_start()
    try:
        exchange.wait(exchange.connected, deadline, BrokerUnavailable("no CONNACK from the broker"))
        exchange.wait(exchange.subscribed, deadline, BrokerUnavailable("no SUBACK from the broker"))
        info = client.publish(
            f"{settings.topic_prefix}{topic}", body, qos=1, properties=exchange.properties()
        )
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise BrokerUnavailable(f"publish failed: {mqtt.error_string(info.rc)}")
        exchange.wait(exchange.answered, deadline, ReplyTimeout(f"no reply in {timeout:g} s"))
    finally:
        client.disconnect()
        client.loop_stop()
    return exchange.response()


class _Exchange:
    """One request's state, filled in from paho's network thread."""

    def __init__(self, response_topic: str, correlation: bytes) -> None:
        self.response_topic = response_topic
        self.correlation = correlation
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.answered = threading.Event()
        self.failure: RequestError | None = None
        self.reply: mqtt.MQTTMessage | None = None

    def properties(self) -> Properties:
        properties = Properties(PacketTypes.PUBLISH)
        properties.ResponseTopic = self.response_topic
        properties.CorrelationData = self.correlation
        properties.ContentType = CONTENT_TYPE
        return properties

    def on_connect(
        self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        if reason.is_failure:
            self._fail(
                BrokerUnavailable(f"the broker refused the connection: {reason_text(reason)}")
            )
            return
        self.connected.set()
        client.subscribe(self.response_topic, qos=1)

    def on_subscribe(
        self, _client: mqtt.Client, _userdata: Any, _mid: int, reasons: Any, _props: Any
    ) -> None:
        if any(reason.is_failure for reason in reasons):
            names = ", ".join(reason_text(reason) for reason in reasons)
            self._fail(BrokerUnavailable(f"cannot subscribe {self.response_topic}: {names}"))
            return
        self.subscribed.set()

    def on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        correlation = getattr(message.properties, "CorrelationData", None)
        if message.topic != self.response_topic or correlation != self.correlation:
            return  # not this request's reply: ignored
        if self.reply is None:
            self.reply = message
            self.answered.set()

    def _fail(self, failure: RequestError) -> None:
        self.failure = failure
        self.connected.set()
        self.subscribed.set()
        self.answered.set()

    def wait(self, event: threading.Event, deadline: float, late: RequestError) -> None:
        """Wait for `event` until `deadline`; raise `late` past it, or what failed meanwhile."""
        if not event.wait(max(0.0, deadline - time.monotonic())):
            raise late
        if self.failure is not None:
            raise self.failure

    def response(self) -> Response:
        message = self.reply
        assert message is not None  # wait() returned: answered
        user = tuple(
            (str(name), str(value))
            for name, value in getattr(message.properties, "UserProperty", None) or ()
        )
        status = dict(user).get(STATUS_PROPERTY, "")
        try:
            parsed = ReplyStatus(status)
        except ValueError:
            raise MalformedReply(f"the reply has no valid {STATUS_PROPERTY} ({status!r})") from None
        payload = bytes(message.payload)
        try:
            document = json.loads(payload)
        except ValueError:
            raise MalformedReply(f"the {parsed.value} reply's payload is not JSON") from None
        return Response(parsed, document, payload, user, message.topic)
