"""MQTT 5 requests at the bridge, without servers: reading the reply address from a message's
properties, the intake's verdict on its Response Topic, and the REFUSED reply that lands with a
refused request's dead letter (docs/requests.md, "At the bridge")."""

from __future__ import annotations

import json
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.reply_address import from_properties, from_raw_properties
from taskhub.deadletters import DeadLetter, Reason
from taskhub.intake import Intake, RawMessage
from taskhub.replies import REPLY_HEADER, Reply, ReplyAddress, ReplyStatus
from taskhub.response_topics import ResponseTopics
from taskhub.routes import RouteTable
from taskhub.task_messages import TaskCall
from tests.test_bridge_units import QUEUE, ROUTES, TOPIC, Rig, make_rig, reading

PREFIX = "tenant/"


def _raw(**values: object) -> bytes:
    """A PUBLISH's property block as it comes off the wire: its length, then the properties."""
    properties = Properties(PacketTypes.PUBLISH)
    for name, value in values.items():
        setattr(properties, name, value)
    return bytes(properties.pack())


# Reading the reply address.


def test_a_response_topic_and_correlation_data_are_read_from_raw_properties() -> None:
    raw = _raw(ResponseTopic="replies/dev-1", CorrelationData=b"\x00\x08req-1")
    assert from_raw_properties(raw) == ReplyAddress("replies/dev-1", b"\x00\x08req-1")


def test_a_response_topic_without_correlation_data_is_an_address_without_one() -> None:
    assert from_raw_properties(_raw(ResponseTopic="replies/a")) == ReplyAddress("replies/a")


def test_properties_without_a_response_topic_give_no_address() -> None:
    assert from_raw_properties(_raw(UserProperty=[("sent_at", "1733000000")])) is None
    # Correlation Data alone asks for nothing: there is nowhere to reply.
    assert from_raw_properties(_raw(CorrelationData=b"\x08\x08")) is None
    assert from_raw_properties(b"") is None


def test_malformed_properties_give_no_address_and_raise_nothing() -> None:
    # The bulk path hands over exactly the Property Length's bytes; what is inside may be wrong.
    assert from_raw_properties(b"\x05\x08\x00\x10ab") is None  # a string longer than the block
    assert from_raw_properties(b"\x02\x08\x00") is None  # a length cut in half
    assert from_raw_properties(b"\x04\x08\x00\x01\xff") is None  # not UTF-8
    assert from_raw_properties(b"\x01\x7f") is None  # no such property


def test_decoded_properties_of_a_qos_2_message_give_the_same_address() -> None:
    properties = Properties(PacketTypes.PUBLISH)
    properties.ResponseTopic = "replies/q2"
    properties.CorrelationData = b"c"
    assert from_properties(properties) == ReplyAddress("replies/q2", b"c")
    assert from_properties(Properties(PacketTypes.PUBLISH)) is None
    assert from_properties(None) is None  # MQTT 3.1.1


# The intake's verdict.


def _request(reply_topic: str, payload: bytes = reading(7)) -> RawMessage:
    address = ReplyAddress(reply_topic, b"corr-1")
    return RawMessage(PREFIX + TOPIC, payload, {}, address)


ROUTED = Intake(RouteTable(ROUTES.routes, PREFIX), 1024, ResponseTopics(("replies/#",), PREFIX))


def test_an_allowed_request_becomes_a_task_that_carries_its_reply_address() -> None:
    call = ROUTED.judge(_request(f"{PREFIX}replies/dev-1"))
    assert isinstance(call, TaskCall)
    assert call.headers == {
        REPLY_HEADER: {"topic": f"{PREFIX}replies/dev-1", "correlation": "Y29yci0x"}
    }
    assert ReplyAddress.from_header(call.headers[REPLY_HEADER]) == ReplyAddress(
        f"{PREFIX}replies/dev-1", b"corr-1"
    )


def test_a_message_that_is_no_request_gets_no_extra_headers() -> None:
    call = ROUTED.judge(RawMessage(PREFIX + TOPIC, reading(7), {}))
    assert isinstance(call, TaskCall)
    assert call.headers is None


@pytest.mark.parametrize(
    ("reply_topic", "why"),
    [
        ("replies/dev-1", "matches no"),  # allowed filters are below the topic prefix
        (f"{PREFIX}elsewhere/dev-1", "matches no"),
        (f"{PREFIX}replies/+", "wildcard"),
        (f"{PREFIX}replies/#", "wildcard"),
        ("", "empty"),
    ],
)
def test_a_request_whose_response_topic_is_not_allowed_is_dead_lettered(
    reply_topic: str, why: str
) -> None:
    letter = ROUTED.judge(_request(reply_topic))
    assert isinstance(letter, DeadLetter)
    assert letter.reason is Reason.RESPONSE_TOPIC_REFUSED
    assert why in letter.detail
    assert ROUTED.refusal_reply(_request(reply_topic), letter) is None, "replied where refused"


def test_no_allowed_filters_refuse_every_request() -> None:
    intake = Intake(RouteTable(ROUTES.routes, PREFIX), 1024)
    letter = intake.judge(_request(f"{PREFIX}replies/dev-1"))
    assert isinstance(letter, DeadLetter)
    assert letter.reason is Reason.RESPONSE_TOPIC_REFUSED


def test_a_refused_response_topic_outranks_a_bad_payload_and_gets_no_reply() -> None:
    request = _request(f"{PREFIX}elsewhere/x", b"{not json")
    letter = ROUTED.judge(request)
    assert isinstance(letter, DeadLetter)
    assert letter.reason is Reason.RESPONSE_TOPIC_REFUSED
    assert ROUTED.refusal_reply(request, letter) is None


def test_a_request_dead_lettered_for_its_payload_gets_a_refused_reply() -> None:
    request = _request(f"{PREFIX}replies/dev-1", b"{not json")
    letter = ROUTED.judge(request)
    assert isinstance(letter, DeadLetter)
    assert letter.reason is Reason.INVALID_JSON
    reply = ROUTED.refusal_reply(request, letter)
    assert reply is not None
    assert reply.address == ReplyAddress(f"{PREFIX}replies/dev-1", b"corr-1")
    assert reply.status is ReplyStatus.REFUSED
    error = json.loads(reply.payload)["error"]
    assert error["reason"] == "invalid_json"
    assert error["detail"] == letter.detail
    assert error["task_id"] is None


# The loop: the reply lands with the letter.


def _refusing_rig(**options: Any) -> Rig:
    rig = make_rig(**options)
    rig.bridge.intake = Intake(ROUTES, 1024, ResponseTopics(("replies/#",)))
    return rig


def test_a_refused_request_lands_its_reply_in_the_same_batch_as_its_letter() -> None:
    rig = _refusing_rig()
    rig.source.send(TOPIC, b"{not json", reply=ReplyAddress("replies/d1", b"k"))
    rig.source.send(TOPIC, b"{not json", reply=ReplyAddress("elsewhere/d1", b"k"))
    rig.send(1)
    rig.turn()
    assert rig.writer.batches == [4], "letter and reply were not landed in one batch"
    assert [letter["reason"] for letter in rig.writer.letters] == [
        "invalid_json",
        "response_topic_refused",
    ]
    assert len(rig.writer.replies) == 1
    entry: dict[bytes | str, bytes | str] = {}
    entry.update(rig.writer.replies[0])
    reply = Reply.from_entry(entry)
    assert reply.address == ReplyAddress("replies/d1", b"k")
    assert reply.status is ReplyStatus.REFUSED
    assert rig.landed == [1]
    assert rig.bridge.counters.landed == 1
    assert rig.bridge.counters.dead_lettered == 2
    assert len(rig.writer.queues[QUEUE]) == 1


def test_a_traced_refused_request_replies_with_the_bridge_spans_context() -> None:
    """The requester can continue the trace from the reply: it names the bridge's span."""
    from bridge.message_spans import MessageSpans
    from tests.support.tracing import PUBLISHER_TRACEPARENT, Traceparent, private_provider

    provider, exporter = private_provider()
    rig = _refusing_rig(spans=lambda clock: MessageSpans(ROUTES, provider, clock))
    rig.source.send(
        TOPIC,
        b"{not json",
        reply=ReplyAddress("replies/d1", b"k"),
        trace={"traceparent": PUBLISHER_TRACEPARENT},
    )
    rig.turn()
    entry: dict[bytes | str, bytes | str] = {}
    entry.update(rig.writer.replies[0])
    properties = dict(Reply.from_entry(entry).user_properties)
    (span,) = exporter.get_finished_spans()
    assert span.context is not None
    sent = Traceparent.parse(properties["traceparent"])
    assert (sent.trace_id, sent.parent_id) == (span.context.trace_id, span.context.span_id)


def test_an_untraced_refused_request_replies_without_a_trace_context() -> None:
    rig = _refusing_rig()
    rig.source.send(TOPIC, b"{not json", reply=ReplyAddress("replies/d1", b"k"))
    rig.turn()
    entry: dict[bytes | str, bytes | str] = {}
    entry.update(rig.writer.replies[0])
    assert Reply.from_entry(entry).user_properties == ()


def test_while_redis_is_down_the_reply_is_spooled_with_its_letter() -> None:
    rig = _refusing_rig()
    rig.writer.down = True
    rig.source.send(TOPIC, b"{not json", reply=ReplyAddress("replies/d1", b"k"))
    rig.turn()
    assert [item.kind.value for _, item in rig.spool.rows] == ["dead_letter", "reply"]
    assert rig.source.acked == [b"{not json"]
    rig.writer.down = False
    rig.wait(10)
    rig.turn_until(lambda: not len(rig.spool))
    assert len(rig.writer.replies) == 1
    assert len(rig.writer.letters) == 1
