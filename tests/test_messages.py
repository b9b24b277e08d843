"""The bridge's hand-built task messages equal the protocol-2 messages apply_async writes."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import redis
from celery import Celery

from taskhub.deferral import SENT_AT_HEADER
from taskhub.task_messages import MessageBuilder, TaskCall, deterministic_task_id

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


@pytest.mark.parametrize("task", ["tasks.checkins.resolve_checkin", "tests.messages.quiet"])
def test_bridge_message_equals_apply_async_message(
    app: Celery, broker_redis: redis.Redis, task: str
) -> None:

    tweet = {
        "id": "42",
        "text": "I'm at Café ☕ http://4sq.com/abcd123",
        "user": {"screen_name": "a"},
        "created_at": "2026-11-22T10:00:00Z",  # apply_async refuses a tweet its task would
    }
    call = TaskCall(
        task=task,
        task_id=deterministic_task_id(task, "42"),
        queue="checkins",
        args=(tweet,),
        kwargs={"city": "nyc"},
    )
    app.tasks[task].apply_async(
        args=(tweet,), kwargs={"city": "nyc"}, task_id=call.task_id, queue="checkins"
    )
    builder = MessageBuilder.for_tasks(app, [task])
    broker_redis.lpush("checkins", builder.build(call))

    bridge_built, celery_built = broker_redis.lrange("checkins", 0, -1)
    assert _decoded(bridge_built) == _decoded(celery_built)


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
