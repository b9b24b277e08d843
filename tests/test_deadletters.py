"""Dead letters end to end: every bad input is kept with its reason, listed, shown, replayed after a
fix, and purged; a task that fails for good lands there too."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from celery.result import AsyncResult

from rig.isolation import free_port
from rig.processes import (
    BRIDGE_READY,
    WORKER_READY,
    Process,
    celery,
    python_module,
    wait_for,
)
from taskhub import redis_keys
from taskhub.deadletters import (
    DeadLetter,
    DeadLetterStream,
    FailedTask,
    LetterFilter,
    LetterKind,
    Reason,
)
from taskhub.demo.feed import publish
from taskhub.intake import RawMessage
from taskhub.mqtt import connect_arguments, new_client
from taskhub.redaction import redact
from taskhub.settings import get_settings
from tests.conftest import checkin_tweet

FIXED_ROUTES = "tests.support.fixed_routes:ROUTES"


def _stream(client: redis.Redis, maxlen: int = 100_000) -> DeadLetterStream:
    return DeadLetterStream(client, get_settings().key_prefix, maxlen)


def _reading(seq: int, value: object = 21.5) -> bytes:
    return json.dumps({"seq": seq, "value": value, "ts": "2026-11-22T10:00:00Z"}).encode()


def _done_key(device: str, payload: bytes) -> str:
    """The done-marker a reading's task sets once it ran."""
    from taskhub.payloads import SensorReading
    from tasks.idempotency import done_key
    from tasks.sensors import reading_identity

    return done_key(reading_identity(device, SensorReading.model_validate_json(payload)))


def taskhub_cli(*args: str, env: dict[str, str] | None = None) -> str:
    """Run the `taskhub` command as a user would; its output, or the test fails with it."""
    done = subprocess.run(
        [sys.executable, "-m", "taskhub.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


# The stream itself, against the real Redis.


def test_a_letter_keeps_its_payload_bytes_exactly_and_reads_back_whole(
    broker_redis: redis.Redis,
) -> None:
    stream = _stream(broker_redis)
    binary = bytes(range(256))
    entry = stream.add(
        DeadLetter(
            Reason.INVALID_UTF8,
            "bad byte",
            topic="sensors/a/reading",
            payload=binary,
            route="sensors:sensors/{device_id}/reading",
            properties={"UserProperty": [["k", "v"]]},
        )
    )
    letter = stream.get(entry)
    assert letter is not None
    assert letter.payload == binary
    assert letter.to_fields()["payload_encoding"] == "base64"
    assert (letter.reason, letter.topic, letter.properties) == (
        Reason.INVALID_UTF8,
        "sensors/a/reading",
        {"UserProperty": [["k", "v"]]},
    )


def test_filters_pick_letters_by_reason_route_and_time(broker_redis: redis.Redis) -> None:
    stream = _stream(broker_redis)
    old = stream.add(DeadLetter(Reason.SCHEMA, "x", route="checkins:checkins/{city}/#"))
    time.sleep(0.01)  # stream ids are milliseconds; the time filter needs two distinct ones
    middle = datetime.now(UTC)
    time.sleep(0.01)
    task = FailedTask("tasks.sensors.record_reading", "id-1", "sensors", [{}], {})
    new = stream.add(DeadLetter(Reason.TASK_FAILED, "y", route="sensors", task=task))

    def ids(which: LetterFilter) -> list[str]:
        return [letter.id for letter in stream.scan(which)]

    assert ids(LetterFilter()) == [new, old]
    assert ids(LetterFilter(reasons=frozenset({Reason.SCHEMA}))) == [old]
    assert ids(LetterFilter(route="checkins")) == [old]
    assert ids(LetterFilter(route="tasks.sensors.record_reading")) == [new]
    assert ids(LetterFilter(since=middle)) == [new]
    assert ids(LetterFilter(until=middle)) == [old]
    assert ids(LetterFilter(since=middle + timedelta(hours=1))) == []


def test_the_stream_is_capped(broker_redis: redis.Redis) -> None:
    stream = _stream(broker_redis, maxlen=100)
    for n in range(1000):
        stream.add(DeadLetter(Reason.NO_ROUTE, str(n)))
    assert 100 <= len(stream) < 300  # MAXLEN ~ trims whole nodes, never below the cap


def test_a_letters_kind_is_stored_as_message_or_task() -> None:
    """Letters outlive the code that wrote them: their `kind` field holds these strings."""
    task = FailedTask("tasks.sensors.record_reading", "id-1", "sensors", [{}], {})
    assert DeadLetter(Reason.SCHEMA, "x").to_fields()["kind"] == "message"
    assert DeadLetter(Reason.TASK_FAILED, "y", task=task).to_fields()["kind"] == "task"
    stored = DeadLetter.from_fields("1-0", {"kind": "task", "reason": "task_failed"})
    assert stored.kind is LetterKind.TASK


def test_passwords_in_urls_never_reach_a_letter() -> None:
    detail = "cannot reach redis://:hunter2@db:6379/0 nor http://bob:pa55@api/x"
    letter = DeadLetter(Reason.TASK_FAILED, detail)
    stored = json.dumps(letter.to_fields())
    assert "hunter2" not in stored
    assert "pa55" not in stored
    assert redact(detail) == "cannot reach redis://:***@db:6379/0 nor http://bob:***@api/x"


# The whole path: real bridge, real worker, real MQTT client.


@pytest.fixture
def letters_of_every_kind(
    broker_redis: redis.Redis, bridge: Process, worker: Process, topic_prefix: str
) -> Iterator[DeadLetterStream]:
    """One valid reading and one bad message of each bridge reason, published and settled."""
    oversize = _reading(9, "x" * get_settings().bridge.max_payload_bytes)
    messages = [
        RawMessage(f"{topic_prefix}sensors/dev-1/reading", _reading(1), {}),
        RawMessage(f"{topic_prefix}sensors/dev-1/readings", _reading(2), {}),  # no route
        RawMessage(f"{topic_prefix}sensors/dev-1/reading", b"\xff\xfe{", {}),
        RawMessage(f"{topic_prefix}sensors/dev-1/reading", b'{"seq": 3,', {}),
        RawMessage(f"{topic_prefix}sensors/dev-1/reading", _reading(4, "21.5 C"), {}),
        RawMessage(f"{topic_prefix}sensors/dev-1/reading", oversize, {}),
        RawMessage(f"{topic_prefix}sensors/dev:1 *x/reading", _reading(5), {}),
    ]
    publish(get_settings().mqtt, messages, rate=0, total=len(messages), show_progress=False)
    stream = _stream(broker_redis)
    wait_for(lambda: len(stream) >= 6, 30, "six dead letters")
    key = redis_keys.effect(get_settings().key_prefix, "reading", "dev-1")
    wait_for(lambda: broker_redis.exists(key) == 1, 30, "the valid reading to be stored")
    yield stream
    assert bridge.popen is not None
    assert bridge.popen.poll() is None, "the bridge died"
    assert bridge.starts == 1


def test_every_bad_input_becomes_one_letter_with_its_reason(
    letters_of_every_kind: DeadLetterStream, topic_prefix: str
) -> None:
    letters = {letter.reason: letter for letter in letters_of_every_kind.scan()}
    assert set(letters) == {
        Reason.NO_ROUTE,
        Reason.INVALID_UTF8,
        Reason.INVALID_JSON,
        Reason.SCHEMA,
        Reason.PAYLOAD_TOO_LARGE,
        Reason.BAD_TOPIC_PARAMETER,
    }
    assert len(letters_of_every_kind) == 6
    assert letters[Reason.INVALID_UTF8].payload == b"\xff\xfe{"
    assert letters[Reason.SCHEMA].detail.startswith("value:")
    assert letters[Reason.SCHEMA].route == "sensors:sensors/{device_id}/reading"
    assert letters[Reason.BAD_TOPIC_PARAMETER].topic == f"{topic_prefix}sensors/dev:1 *x/reading"
    assert "device_id" in letters[Reason.BAD_TOPIC_PARAMETER].detail


def test_list_show_replay_after_fixing_the_routes_and_purge(
    letters_of_every_kind: DeadLetterStream, broker_redis: redis.Redis
) -> None:
    stream = letters_of_every_kind
    listed = taskhub_cli("deadletter", "list")
    for reason in ("no_route", "invalid_utf8", "invalid_json", "schema", "payload_too_large"):
        assert reason in listed
    assert "6 shown of 6 stored" in listed
    (schema,) = stream.scan(LetterFilter(reasons=frozenset({Reason.SCHEMA})))
    shown = taskhub_cli("deadletter", "show", schema.id)
    assert "21.5 C" in shown
    assert "value" in shown

    # With today's routes nothing can be taken back: every letter is still refused, none lost.
    unchanged = taskhub_cli("deadletter", "replay", "--all")
    assert "replay: enqueued=0 still_refused=6 skipped=0" in unchanged
    assert len(stream) == 6

    # The fix: a model that reads values with units, a route for the new topic.
    fixed = taskhub_cli(
        "deadletter", "replay", "--reason", "schema", "--reason", "no_route",
        env={"TASKHUB_ROUTES": FIXED_ROUTES},
    )  # fmt: skip
    assert "replay: enqueued=2 still_refused=0 skipped=0" in fixed
    done = [_done_key("dev-1", _reading(seq)) for seq in (2, 4)]  # "21.5 C" now reads 21.5
    wait_for(lambda: broker_redis.exists(*done) == 2, 30, "the replayed readings to run")
    assert len(stream) == 4
    again = taskhub_cli(
        "deadletter", "replay", "--reason", "schema", env={"TASKHUB_ROUTES": FIXED_ROUTES}
    )
    assert "replay: enqueued=0 still_refused=0 skipped=0" in again

    purged = taskhub_cli("deadletter", "purge", "--reason", "invalid_utf8", "--yes")
    assert "purge: deleted=1" in purged
    assert {letter.reason for letter in stream.scan()} == {
        Reason.INVALID_JSON,
        Reason.PAYLOAD_TOO_LARGE,
        Reason.BAD_TOPIC_PARAMETER,
    }


def test_replaying_one_letter_twice_runs_its_task_once(
    broker_redis: redis.Redis, worker: Process, topic_prefix: str
) -> None:
    stream = _stream(broker_redis)
    topic = f"{topic_prefix}sensors/dev-7/reading"
    letter = DeadLetter(
        Reason.SCHEMA, "value: not a number", topic=topic, payload=_reading(7, "3 C")
    )
    first = stream.add(letter)
    second = stream.add(letter)  # the same message dead-lettered twice (an MQTT redelivery)
    replayed = taskhub_cli(
        "deadletter", "replay", first, second, env={"TASKHUB_ROUTES": FIXED_ROUTES}
    )
    assert "replay: enqueued=2" in replayed
    duplicates = redis_keys.duplicates_absorbed(get_settings().key_prefix)
    wait_for(
        lambda: broker_redis.hget(duplicates, "tasks.sensors.record_reading") == b"1",
        30,
        "the second copy to be absorbed",
    )
    assert len(stream) == 0


# Tasks that fail for good.


FAILURES = {
    # The short-link service answers 404: not worth retrying, fails at once.
    "unresolvable": ({"TASKHUB_HTTP__SHORTLINK_BASE_URL": "{shortlinks}/nothing"}, 0),
    # The venue service is down: retried once, then given up.
    "retries exhausted": ({"TASKHUB_HTTP__VENUE_API_BASE_URL": "http://127.0.0.1:{closed}/v2"}, 1),
}


@pytest.fixture(params=sorted(FAILURES))
def failing_worker(
    request: pytest.FixtureRequest, log_dir: Path, broker_redis: redis.Redis, standin: object
) -> Iterator[tuple[str, Process]]:
    overrides, max_retries = FAILURES[request.param]
    shortlinks = os.environ["TASKHUB_HTTP__SHORTLINK_BASE_URL"].removesuffix("/s")
    env = {
        name: value.format(shortlinks=shortlinks, closed=free_port())
        for name, value in overrides.items()
    }
    env["TASKHUB_TASKS__MAX_RETRIES"] = str(max_retries)
    env["PYTHONUNBUFFERED"] = "1"
    argv = celery("worker", "-P", "solo", "--loglevel=INFO", "--without-mingle", "--without-gossip")
    process = Process("failing-worker", [*argv, "-n", f"failing-{os.getpid()}@%h"], log_dir, env)
    try:
        process.start().wait_output(WORKER_READY, timeout=60)
        yield request.param, process
    finally:
        process.kill()


def test_a_task_that_fails_for_good_is_dead_lettered_and_shows_as_failure(
    broker_redis: redis.Redis, failing_worker: tuple[str, Process]
) -> None:
    from tasks.checkins import resolve_checkin

    failure, _ = failing_worker
    result = resolve_checkin.delay(checkin_tweet("700", "abcdef1"), city="nyc")
    stream = _stream(broker_redis)
    wait_for(lambda: len(stream) == 1, 30, "the failed task's dead letter")
    (letter,) = stream.scan()
    assert letter.reason is Reason.TASK_FAILED
    assert letter.task is not None
    assert letter.task.task_id == result.id
    assert letter.task.args == [checkin_tweet("700", "abcdef1")]
    assert letter.task.kwargs == {"city": "nyc"}
    if failure == "unresolvable":
        assert letter.task.exception == "tasks.checkins.CheckinNotResolvable"
        assert "answered 404" in letter.detail
        assert "expand_short_link" in letter.task.traceback
    else:
        assert letter.task.exception == "tasks.http.UpstreamUnreachable"
        assert letter.task.retries == 1
        assert "fetch_venue" in letter.task.traceback
    wait_for(lambda: AsyncResult(result.id).state == "FAILURE", 10, "FAILURE in the backend")


def test_dead_letters_are_also_published_to_the_configured_mqtt_topic(
    broker_redis: redis.Redis, log_dir: Path, topic_prefix: str
) -> None:
    letters_topic = f"{topic_prefix}deadletters"
    received: queue.Queue[bytes] = queue.Queue()
    subscribed = threading.Event()
    listener = new_client(get_settings().mqtt, f"letters-{os.getpid()}", persistent=False)
    listener.on_message = lambda client, userdata, message: received.put(bytes(message.payload))
    listener.on_subscribe = lambda *args: subscribed.set()
    listener.on_connect = lambda client, *args: client.subscribe(letters_topic, qos=1)
    listener.connect(**connect_arguments(get_settings().mqtt, persistent=False))
    listener.loop_start()
    env = {
        "TASKHUB_BRIDGE__DEADLETTER_TOPIC": letters_topic,
        "TASKHUB_MQTT__CLIENT_ID": f"letters-bridge-{os.getpid()}",
    }
    bridge = Process("letters-bridge", python_module("bridge"), log_dir, env).start()
    try:
        assert subscribed.wait(timeout=30)
        bridge.wait_output(BRIDGE_READY, timeout=30, count=2)
        bad = RawMessage(f"{topic_prefix}sensors/dev-9/reading", b"{not json", {})
        publish(get_settings().mqtt, [bad], rate=0, total=1, show_progress=False)
        fields = json.loads(received.get(timeout=30))
    finally:
        bridge.terminate()
        listener.loop_stop()
        listener.disconnect()
    assert fields["reason"] == "invalid_json"
    assert fields["topic"] == bad.topic
    assert fields["payload"] == "{not json"
    assert len(_stream(broker_redis)) == 1  # the stream holds the letter as well
