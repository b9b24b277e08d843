"""A bad payload reaches the caller in words: at `.delay()` time, or from `.get()` when it was
sent past that check, as `taskhub.payloads.InvalidPayload` both times, with a real worker."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

from rig.processes import wait_for
from taskhub.deadletters import DeadLetterStream, Reason
from taskhub.payloads import InvalidPayload
from taskhub.settings import get_settings
from tests.conftest import checkin_tweet

TIMEOUT = 30
NO_LINK = r"tasks\.checkins\.resolve_checkin: tweet\.text: text carries no 4sq\.com short link"


def _no_link_tweet(tweet_id: str) -> dict[str, Any]:
    return checkin_tweet(tweet_id, "x") | {"text": "no link here"}


def _queued(client: redis.Redis, queue: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in client.lrange(queue, 0, -1)]


def test_delay_with_a_bad_payload_raises_at_call_time_naming_task_field_and_reason(
    broker_redis: redis.Redis,
) -> None:
    from tasks.checkins import resolve_checkin
    from tasks.sensors import record_reading

    with pytest.raises(InvalidPayload, match=f"^{NO_LINK}$"):
        resolve_checkin.delay(_no_link_tweet("5001"), city="nyc")
    with pytest.raises(InvalidPayload, match=r"tweet\.user\.screen_name: Field required"):
        resolve_checkin.apply_async((checkin_tweet("5002", "Ok12345") | {"user": {}},))
    with pytest.raises(InvalidPayload, match=r"^tasks\.sensors\.record_reading: reading\.seq: "):
        record_reading.delay({"seq": -1, "value": 1.0, "ts": "2026-01-01T00:00:00Z"})
    with pytest.raises(InvalidPayload, match=r"reading: Input should be a valid dictionary"):
        record_reading.delay(reading="not a reading")
    assert broker_redis.llen("checkins") == broker_redis.llen("sensors") == 0


@pytest.mark.usefixtures("standin", "worker")
def test_a_bad_payload_sent_past_the_check_fails_get_in_words_once_and_is_dead_lettered(
    broker_redis: redis.Redis,
) -> None:
    from taskhub.celery import app

    result = app.send_task("tasks.checkins.resolve_checkin", args=[_no_link_tweet("5003")])

    with pytest.raises(InvalidPayload, match=f"^{NO_LINK}$"):
        result.get(timeout=TIMEOUT)
    stream = DeadLetterStream(broker_redis, get_settings().key_prefix)
    wait_for(lambda: len(stream) == 1, TIMEOUT, "the bad payload's dead letter")
    (letter,) = stream.scan()
    assert letter.reason is Reason.TASK_FAILED
    assert letter.task is not None
    assert letter.task.exception == "taskhub.payloads.InvalidPayload"
    assert letter.task.retries == 0
    assert letter.detail == "InvalidPayload: " + NO_LINK.replace("\\", "")


def test_a_good_delay_lands_on_its_route_queue(broker_redis: redis.Redis) -> None:
    from tasks.checkins import resolve_checkin

    resolve_checkin.delay(checkin_tweet("5004", "Good123"), city="nyc")

    (message,) = _queued(broker_redis, "checkins")
    assert message["headers"]["task"] == "tasks.checkins.resolve_checkin"


@pytest.mark.usefixtures("standin", "worker")
def test_a_good_delay_still_runs_on_a_real_worker() -> None:
    from tasks.checkins import resolve_checkin

    result = resolve_checkin.delay(checkin_tweet("5005", "Good456"), city="nyc").get(
        timeout=TIMEOUT
    )

    assert (result["tweet_id"], result["short_code"]) == ("5005", "Good456")
