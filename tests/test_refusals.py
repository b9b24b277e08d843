"""Messages a worker must never run are refused and dead-lettered, and the worker keeps going."""

from __future__ import annotations

import base64
import json
import os
import pickle
import uuid
from pathlib import Path

import redis

from rig.processes import Process, wait_for
from taskhub import redis_keys
from taskhub.deadletters import DeadLetterStream, Reason
from taskhub.settings import get_settings
from taskhub.task_messages import MessageBuilder, TaskCall


class _Payload:
    """Unpickling this creates a file: the proof a pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, ...]]:
        return (os.system, (f"touch {self.marker}",))


def _reading_call(device: str, seq: int) -> TaskCall:
    return TaskCall(
        task="tasks.sensors.record_reading",
        task_id=str(uuid.uuid4()),
        queue="sensors",
        args=({"seq": seq, "value": 1.5, "ts": "2026-11-22T10:00:00+00:00"},),
        kwargs={"device_id": device},
    )


def _stream(client: redis.Redis) -> DeadLetterStream:
    return DeadLetterStream(client, get_settings().key_prefix)


def test_a_pickled_message_pushed_into_a_queue_is_refused_recorded_and_never_run(
    broker_redis: redis.Redis, worker: Process, tmp_path: Path
) -> None:
    marker = tmp_path / "pickle-was-executed"
    envelope = json.loads(MessageBuilder().build(_reading_call("attacker", 1)))
    hostile = pickle.dumps(((_Payload(marker),), {}, {}))
    envelope["body"] = base64.b64encode(hostile).decode()
    envelope["content-type"] = "application/x-python-serialize"
    envelope["content-encoding"] = "binary"
    broker_redis.lpush("sensors", json.dumps(envelope))
    valid = _reading_call("honest", 2)
    broker_redis.lpush("sensors", MessageBuilder().build(valid))

    key_prefix = get_settings().key_prefix
    wait_for(
        lambda: broker_redis.exists(redis_keys.effect(key_prefix, "reading", "honest")) == 1,
        30,
        "the valid task after the hostile one to run",
    )
    letters = list(_stream(broker_redis).scan())
    assert [letter.reason for letter in letters] == [Reason.CONTENT_DISALLOWED]
    (letter,) = letters
    assert letter.payload == hostile  # the bytes kept exactly, for inspection
    assert letter.task is not None
    assert letter.task.name == "tasks.sensors.record_reading"
    assert "application/x-python-serialize" in letter.detail
    assert not letter.replayable
    assert not marker.exists()
    assert broker_redis.exists(redis_keys.effect(key_prefix, "reading", "attacker")) == 0
    assert "dead-lettered" in worker.output()


def test_a_task_name_no_worker_knows_is_recorded_and_replayable(
    broker_redis: redis.Redis, worker: Process
) -> None:
    call = _reading_call("ghost", 3)
    unknown = TaskCall("tasks.sensors.no_such_task", call.task_id, "sensors", call.args, {})
    broker_redis.lpush("sensors", MessageBuilder().build(unknown))
    stream = _stream(broker_redis)
    wait_for(lambda: len(stream) == 1, 30, "the unknown task to be dead-lettered")
    (letter,) = stream.scan()
    assert letter.reason is Reason.UNKNOWN_TASK
    assert letter.task is not None
    assert (letter.task.name, letter.task.task_id) == ("tasks.sensors.no_such_task", call.task_id)
    assert letter.task.args == [dict(call.args[0])]
