"""The bridge's hand-built task messages equal the protocol-2 messages apply_async writes."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import pytest
import redis
from celery import Celery

from taskhub.argsrepr import argsrepr
from taskhub.deferral import SENT_AT_HEADER
from taskhub.task_messages import ARGSREPR_MAX, MessageBuilder, TaskCall, deterministic_task_id
from taskhub.tracing import TRACEPARENT, TRACESTATE
from tests.support.tracing import (
    PUBLISHER_TRACE_ID,
    PUBLISHER_TRACEPARENT,
    PUBLISHER_TRACESTATE,
    Traceparent,
    private_provider,
)

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

# Differ by sender or by delivery, not by meaning.
PER_SENDER = {"origin", SENT_AT_HEADER}
PER_DELIVERY = {"delivery_tag", "reply_to"}


def _decoded(raw: bytes | str) -> dict[str, Any]:
    envelope = json.loads(raw)
    envelope["body"] = json.loads(base64.b64decode(envelope["body"]))
    for key in PER_SENDER:
        envelope["headers"].pop(key)  # present in both: a missing one raises KeyError
    for key in PER_DELIVERY:
        envelope["properties"].pop(key)
    return dict(envelope)


def quiet(document: dict[str, Any], city: str = "") -> None:
    """A task whose own options differ from the config's: its messages must carry them."""


@pytest.fixture
def app() -> Celery:
    """taskhub's Celery app with the tasks these tests send. Imported here, not at the top: it
    reads the settings, which wait for this run's Redis database (tests/conftest.py)."""
    import tasks.checkins  # noqa: F401  (registers resolve_checkin)
    from taskhub.celery import app

    app.task(name="tests.messages.quiet", ignore_result=True, time_limit=7, soft_time_limit=5)(
        quiet
    )
    return app


def _tweet(text: str = "I'm at Café ☕ http://4sq.com/abcd123") -> dict[str, Any]:
    """A tweet resolve_checkin takes: apply_async refuses one its task would."""
    return {
        "id": "42",
        "text": text,
        "user": {"screen_name": "a"},
        "created_at": "2026-11-22T10:00:00Z",
    }


def _tweet_with_argsrepr_length(length: int) -> dict[str, Any]:
    """A tweet whose argument tuple renders in exactly `length` characters, uncut."""
    text = "at http://4sq.com/abcd123 "
    short = len(argsrepr((_tweet(text),), 10 * length))
    return _tweet(text + "x" * (length - short))


UNICODE_TEXT = (
    "Café ☕ 🙂 𝄞 e\u0301 עברית \u2028\u2029 \ufeff 'single' \"double\" back\\slash \n\t\x00 "
    "http://4sq.com/abcd123"
)

ENVELOPE_CASES: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {
    "empty kwargs": ((_tweet(),), {}),
    "argsrepr one short of the cut": ((_tweet_with_argsrepr_length(ARGSREPR_MAX - 1),), {}),
    "argsrepr at the cut": ((_tweet_with_argsrepr_length(ARGSREPR_MAX),), {}),
    "argsrepr one past the cut": ((_tweet_with_argsrepr_length(ARGSREPR_MAX + 1),), {}),
    "argsrepr far past the cut": ((_tweet("http://4sq.com/abcd123 " + "é" * 970),), {}),
    "kwargsrepr past the cut": ((_tweet(),), {"city": "n" * (2 * ARGSREPR_MAX)}),
    "unicode": ((_tweet(UNICODE_TEXT),), {"city": "Zürich 東京 🙂 'x' \"y\""}),
}
"""Arguments where a hand-written envelope could part from Celery's: what `argsrepr` cuts, what
JSON escapes, and nothing at all."""


def _bridge_and_celery_messages(
    app: Celery,
    broker_redis: redis.Redis,
    task: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    traced: TaskCall | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """`traced`: the bridge sends this call (the same one, with its trace headers) instead."""
    call = TaskCall(
        task=task,
        task_id=deterministic_task_id(task, "42"),
        queue="checkins",
        args=args,
        kwargs=kwargs,
    )
    app.tasks[task].apply_async(args=args, kwargs=kwargs, task_id=call.task_id, queue="checkins")
    call = traced or call
    builder = MessageBuilder.for_tasks(app, [task])
    broker_redis.lpush("checkins", builder.build(call))
    bridge_built, celery_built = broker_redis.lrange("checkins", 0, -1)
    return _decoded(bridge_built), _decoded(celery_built)


@pytest.mark.parametrize("task", ["tasks.checkins.resolve_checkin", "tests.messages.quiet"])
def test_bridge_message_equals_apply_async_message(
    app: Celery, broker_redis: redis.Redis, task: str
) -> None:
    bridge_built, celery_built = _bridge_and_celery_messages(
        app, broker_redis, task, (_tweet(),), {"city": "nyc"}
    )
    assert bridge_built == celery_built


@pytest.mark.parametrize("case", list(ENVELOPE_CASES))
def test_bridge_message_equals_apply_async_message_at_the_edges(
    app: Celery, broker_redis: redis.Redis, case: str
) -> None:
    args, kwargs = ENVELOPE_CASES[case]
    bridge_built, celery_built = _bridge_and_celery_messages(
        app, broker_redis, "tasks.checkins.resolve_checkin", args, kwargs
    )
    assert bridge_built == celery_built


def test_the_edge_cases_are_where_they_say() -> None:
    """The argsrepr cases sit where saferepr starts cutting, so the test above proves the cut."""
    rendered = {
        case: argsrepr(args, 10 * ARGSREPR_MAX) for case, (args, _) in ENVELOPE_CASES.items()
    }
    assert len(rendered["argsrepr one short of the cut"]) == ARGSREPR_MAX - 1
    assert len(rendered["argsrepr at the cut"]) == ARGSREPR_MAX
    assert len(rendered["argsrepr one past the cut"]) == ARGSREPR_MAX + 1
    assert len(argsrepr(ENVELOPE_CASES["argsrepr far past the cut"][0], ARGSREPR_MAX)) < len(
        rendered["argsrepr far past the cut"]
    )
    assert ENVELOPE_CASES["empty kwargs"][1] == {}


def test_tasks_the_builder_was_not_given_get_the_config_options(app: Celery) -> None:
    builder = MessageBuilder.for_tasks(app, [])
    headers = json.loads(builder.build(TaskCall("tasks.other", "id-1", "q", ({},), {})))["headers"]
    assert headers["timelimit"] == [app.conf.task_time_limit, app.conf.task_soft_time_limit]
    assert headers["ignore_result"] is bool(app.conf.task_ignore_result)


def test_task_ids_are_deterministic_per_task_and_identity() -> None:
    first = deterministic_task_id("tasks.a.b", "1")
    assert first == deterministic_task_id("tasks.a.b", "1")
    assert first != deterministic_task_id("tasks.a.b", "2")
    assert first != deterministic_task_id("tasks.a.c", "1")


def test_the_fast_uuids_are_the_standard_ones() -> None:
    import uuid

    from taskhub.task_messages import TASK_ID_NAMESPACE, random_uuid

    for identity in ("1", "é", "x" * 300, ""):
        expected = str(uuid.uuid5(TASK_ID_NAMESPACE, f"tasks.a.b\x00{identity}"))
        assert deterministic_task_id("tasks.a.b", identity) == expected
    made = uuid.UUID(random_uuid())
    assert (made.version, made.variant) == (4, uuid.RFC_4122)
    assert random_uuid() != random_uuid()


@pytest.fixture
def instrumented() -> Iterator[TracerProvider]:
    """opentelemetry-instrumentation-celery on, as a traced service runs it, with a provider of
    this test's own (tests/support/tracing.py)."""
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    provider, _ = private_provider()
    instrumentor = CeleryInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    yield provider
    instrumentor.uninstrument()


PUBLISHER_CONTEXTS: dict[str, dict[str, str]] = {
    "no context": {},
    "traceparent": {TRACEPARENT: PUBLISHER_TRACEPARENT},
    "traceparent and tracestate": {
        TRACEPARENT: PUBLISHER_TRACEPARENT,
        TRACESTATE: PUBLISHER_TRACESTATE,
    },
}


def _traced_call(
    provider: TracerProvider, task: str, args: tuple[Any, ...], carried: Mapping[str, str]
) -> TaskCall:
    """The call as the bridge sends it for a message whose user properties carry `carried`."""
    from bridge.message_spans import MessageSpans
    from bridge.source import Received
    from taskhub.intake import RawMessage
    from taskhub.payloads import CheckinTweet
    from taskhub.routes import Route, RouteTable
    from taskhub.topics import TopicPattern

    route = Route(TopicPattern("checkins/{city}/tweets"), task, "checkins", CheckinTweet)
    routes = RouteTable([route])
    message = RawMessage("checkins/nyc/tweets", b"{}", {}, trace=dict(carried) or None)
    received = Received(message, 1, 1, 1, read_at=time.monotonic())
    call = TaskCall(task, deterministic_task_id(task, "42"), "checkins", args, {"city": "nyc"})
    _, traced = MessageSpans(routes, provider).start(received, call)
    assert isinstance(traced, TaskCall)
    return traced


@pytest.mark.parametrize("case", list(PUBLISHER_CONTEXTS))
def test_a_traced_bridge_message_carries_what_apply_async_carries_under_the_instrumentation(
    app: Celery, broker_redis: redis.Redis, instrumented: TracerProvider, case: str
) -> None:
    """The same trace headers, in the same format; the ids differ only by value (each side's
    own span is the parent) and, in the publisher's trace, the trace id is the same."""
    from opentelemetry import context, propagate

    carried = PUBLISHER_CONTEXTS[case]
    task = "tasks.checkins.resolve_checkin"
    args = (_tweet(),)
    token = context.attach(propagate.extract(carried))  # apply_async called inside that trace
    try:
        bridge_built, celery_built = _bridge_and_celery_messages(
            app,
            broker_redis,
            task,
            args,
            {"city": "nyc"},
            traced=_traced_call(instrumented, task, args, carried),
        )
    finally:
        context.detach(token)
    assert TRACEPARENT in celery_built["headers"], "the instrumentation injected nothing"
    ours = Traceparent.parse(bridge_built["headers"].pop(TRACEPARENT))
    theirs = Traceparent.parse(celery_built["headers"].pop(TRACEPARENT))
    assert bridge_built == celery_built  # every other header, tracestate included
    assert ours.flags == theirs.flags
    assert ours.parent_id != theirs.parent_id
    if carried:
        assert ours.trace_id == theirs.trace_id == PUBLISHER_TRACE_ID
    else:
        assert ours.trace_id != theirs.trace_id
