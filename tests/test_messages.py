"""The bridge's hand-built task messages equal the protocol-2 messages apply_async writes."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import redis
from celery import Celery

from taskhub.argsrepr import argsrepr
from taskhub.deferral import SENT_AT_HEADER
from taskhub.task_messages import ARGSREPR_MAX, MessageBuilder, TaskCall, deterministic_task_id

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
) -> tuple[dict[str, Any], dict[str, Any]]:
    call = TaskCall(
        task=task,
        task_id=deterministic_task_id(task, "42"),
        queue="checkins",
        args=args,
        kwargs=kwargs,
    )
    app.tasks[task].apply_async(args=args, kwargs=kwargs, task_id=call.task_id, queue="checkins")
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
