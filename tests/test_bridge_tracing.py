"""Trace context through the bridge: read from a message's MQTT 5 user properties, continued by
the bridge's span, written into the task message (docs/tracing.md, "At the bridge").

The loop's span handling, branch by branch, is in test_bridge_units.py; here, the reading of the
properties, and the real bridge (`build_bridge`, run in a thread of this process so its spans
reach an in-memory exporter) against the shared Mosquitto and this run's Redis.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import redis
from opentelemetry.trace import SpanKind
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.source import MqttSource
from bridge.trace_context import from_properties, from_raw_properties
from rig.processes import wait_for
from taskhub.tracing import TRACEPARENT, TRACESTATE
from tests.support.bridge_thread import WAIT_SECONDS, publish_checkins, running_bridge
from tests.support.tracing import (
    PUBLISHER_SPAN_ID,
    PUBLISHER_TRACE_ID,
    PUBLISHER_TRACEPARENT,
    PUBLISHER_TRACESTATE,
    Traceparent,
    private_provider,
)


def _raw(*pairs: tuple[str, str]) -> bytes:
    """A PUBLISH's property block as it comes off the wire, length first."""
    properties = Properties(PacketTypes.PUBLISH)
    properties.UserProperty = list(pairs)
    packed: bytes = properties.pack()
    return packed


# Reading the properties.


def test_the_trace_context_is_read_from_user_properties_in_both_receive_paths() -> None:
    pairs = (("sensor", "boiler-2"), (TRACEPARENT, PUBLISHER_TRACEPARENT))
    expected = {TRACEPARENT: PUBLISHER_TRACEPARENT}
    assert from_raw_properties(_raw(*pairs)) == expected
    properties = Properties(PacketTypes.PUBLISH)
    properties.UserProperty = list(pairs)
    assert from_properties(properties.json()) == expected  # the QoS 2 path's decoded form


def test_several_tracestate_properties_are_one_list_and_two_traceparents_none() -> None:
    first, second = (TRACESTATE, "congo=t61rcWkgMzE"), (TRACESTATE, "rojo=1")
    both = from_raw_properties(_raw(first, (TRACEPARENT, PUBLISHER_TRACEPARENT), second))
    assert both == {TRACEPARENT: PUBLISHER_TRACEPARENT, TRACESTATE: "congo=t61rcWkgMzE,rojo=1"}
    assert from_raw_properties(_raw((TRACEPARENT, "a"), (TRACEPARENT, "b"))) is None
    assert from_raw_properties(_raw((TRACESTATE, PUBLISHER_TRACESTATE))) is None


def test_properties_that_cannot_name_a_traceparent_are_not_decoded() -> None:
    assert from_raw_properties(_raw(("sent_at", "1700000000"))) is None
    assert from_raw_properties(b"\x05garbage") is None  # never decoded: it would raise
    assert from_raw_properties(b"\x0btraceparent") is None  # decoded, malformed: no context
    assert from_raw_properties(_raw(("Traceparent", PUBLISHER_TRACEPARENT))) is None  # lower case


# The real bridge.


def task_headers(client: redis.Redis, count: int) -> dict[str, dict[str, Any]]:
    """The headers of the first `count` check-in tasks in Redis, by tweet id."""
    wait_for(lambda: client.llen("checkins") >= count, WAIT_SECONDS, f"{count} tasks in Redis")
    found = {}
    for raw in client.lrange("checkins", 0, -1):
        envelope = json.loads(raw)
        args, _kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
        found[args[0]["id"]] = envelope["headers"]
    return found


def test_the_bridge_continues_a_publishers_trace_or_starts_one_and_hands_it_to_the_task(
    broker_redis: redis.Redis,
) -> None:
    provider, exporter = private_provider()
    started = time.time_ns()
    with running_bridge(provider):
        publish_checkins(
            {
                "1": [(TRACEPARENT, PUBLISHER_TRACEPARENT), (TRACESTATE, PUBLISHER_TRACESTATE)],
                "2": [("sent_at", str(time.time()))],
            }
        )
        headers = task_headers(broker_redis, 2)
    stopped = time.time_ns()
    spans = {
        (span.attributes or {})["messaging.message.id"]: span
        for span in exporter.get_finished_spans()
    }
    assert set(spans) == {headers["1"]["id"], headers["2"]["id"]}
    continued, new = spans[headers["1"]["id"]], spans[headers["2"]["id"]]
    assert continued.parent is not None
    assert continued.parent.is_remote
    assert (continued.parent.trace_id, continued.parent.span_id) == (
        PUBLISHER_TRACE_ID,
        PUBLISHER_SPAN_ID,
    )
    assert new.parent is None
    for tweet_id, span in (("1", continued), ("2", new)):
        assert span.kind is SpanKind.CONSUMER
        assert span.start_time is not None
        assert span.end_time is not None
        assert started <= span.start_time <= span.end_time <= stopped
        carried = Traceparent.parse(headers[tweet_id][TRACEPARENT])
        assert carried.trace_id == span.context.trace_id
        assert carried.parent_id == span.context.span_id
    assert headers["1"][TRACESTATE] == PUBLISHER_TRACESTATE
    assert TRACESTATE not in headers["2"]


def test_with_tracing_off_the_bridge_adds_no_trace_headers(broker_redis: redis.Redis) -> None:
    with running_bridge(None) as bridge:
        assert isinstance(bridge.source, MqttSource)
        assert not bridge.source.traced
        assert bridge.spans is None
        publish_checkins({"1": [(TRACEPARENT, PUBLISHER_TRACEPARENT)]})
        headers = task_headers(broker_redis, 1)
    assert not {TRACEPARENT, TRACESTATE} & set(headers["1"])
