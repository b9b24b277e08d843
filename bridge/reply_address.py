"""A request's reply address, read from its MQTT 5 properties: Response Topic (property 0x08) and
Correlation Data (0x09). Where the reply may go is the intake's to judge (taskhub/intake.py).

As with `bridge.publish_time`, the bulk path's raw property bytes are decoded only when they may
hold a Response Topic: a message without one costs a byte search, one without properties nothing.
"""

from __future__ import annotations

from paho.mqtt.exception import MalformedPacket
from paho.mqtt.properties import Properties

from bridge.bulk_client import unpack_properties
from taskhub.replies import ReplyAddress

RESPONSE_TOPIC = 0x08
"""MQTT 5 property identifier of Response Topic (3.3.2.3.5)."""
_RESPONSE_TOPIC_BYTE = bytes([RESPONSE_TOPIC])


def from_raw_properties(raw: bytes) -> ReplyAddress | None:
    """From a PUBLISH's raw MQTT 5 properties (starting with their length), or None when they
    name no Response Topic or cannot be decoded (the dead letter, if any, says why)."""
    if _RESPONSE_TOPIC_BYTE not in raw:
        return None
    try:
        properties = unpack_properties(raw)
    except MalformedPacket:
        return None
    return from_properties(properties)


def from_properties(properties: Properties | None) -> ReplyAddress | None:
    """From paho's decoded properties (a QoS 2 message's), or None without a Response Topic.

    The topic is kept as sent, even empty or with a wildcard: the intake refuses such a one with
    a reason rather than the request going unanswered and unexplained.
    """
    topic = getattr(properties, "ResponseTopic", None)
    if not isinstance(topic, str):
        return None
    correlation = getattr(properties, "CorrelationData", None)
    return ReplyAddress(topic, bytes(correlation) if correlation is not None else None)
