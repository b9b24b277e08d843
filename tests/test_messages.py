"""The bridge's hand-built task messages equal the protocol-2 messages apply_async writes."""

from __future__ import annotations

import base64
import json
from typing import Any

import redis

from bridge.messages import MessageBuilder, TaskCall, deterministic_task_id

# Differ by sender or by delivery, not by meaning.
PER_SENDER = {"origin"}
PER_DELIVERY = {"delivery_tag", "reply_to"}


def _decoded(raw: bytes | str) -> dict[str, Any]:
    envelope = json.loads(raw)
    envelope["body"] = json.loads(base64.b64decode(envelope["body"]))
    for key in PER_SENDER:
        envelope["headers"].pop(key)
    for key in PER_DELIVERY:
        envelope["properties"].pop(key)
    return dict(envelope)


def test_bridge_message_equals_apply_async_message(broker_redis: redis.Redis) -> None:
    from tasks.checkins import resolve_checkin

    tweet = {
        "id": "42",
        "text": "I'm at Café ☕ http://4sq.com/abcd123",
        "user": {"screen_name": "a"},
    }
    call = TaskCall(
        task="tasks.checkins.resolve_checkin",
        task_id=deterministic_task_id("tasks.checkins.resolve_checkin", "42"),
        queue="checkins",
        args=(tweet,),
        kwargs={"city": "nyc"},
    )
    resolve_checkin.apply_async(args=(tweet,), kwargs={"city": "nyc"}, task_id=call.task_id)
    from taskhub.settings import get_settings

    limits = get_settings().tasks
    builder = MessageBuilder(time_limits=(limits.time_limit, limits.soft_time_limit))
    broker_redis.lpush("checkins", builder.build(call))

    bridge_built, celery_built = broker_redis.lrange("checkins", 0, -1)
    assert _decoded(bridge_built) == _decoded(celery_built)


def test_task_ids_are_deterministic_per_task_and_identity() -> None:
    first = deterministic_task_id("tasks.a.b", "1")
    assert first == deterministic_task_id("tasks.a.b", "1")
    assert first != deterministic_task_id("tasks.a.b", "2")
    assert first != deterministic_task_id("tasks.a.c", "1")


def test_the_fast_uuids_are_the_standard_ones() -> None:
    import uuid

    from bridge.messages import TASK_ID_NAMESPACE, random_uuid

    for identity in ("1", "é", "x" * 300, ""):
        expected = str(uuid.uuid5(TASK_ID_NAMESPACE, f"tasks.a.b\x00{identity}"))
        assert deterministic_task_id("tasks.a.b", identity) == expected
    made = uuid.UUID(random_uuid())
    assert (made.version, made.variant) == (4, uuid.RFC_4122)
    assert random_uuid() != random_uuid()
