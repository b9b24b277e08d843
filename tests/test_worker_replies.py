"""Workers reply to MQTT 5 requests through the outbox (docs/requests.md): one OK reply when the
effect commits, the stored result again for each absorbed duplicate, FAILED for a task that
fails for good, and nothing for a task that was no request. An embedded worker, real Redis."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import redis

import tasks.failures  # noqa: F401  (the worker's dead-letter and FAILED-reply hook)
from rig.processes import wait_for
from taskhub.replies import REPLY_HEADER, ReplyAddress, ReplyStatus
from tests.conftest import checkin_tweet, outbox_replies, resolved_announcements
from tests.support import reply_tasks

TIMEOUT = 30
ADDRESS = ReplyAddress("test/replies/r1", b"\x00\xffcorrelation")


def _headers(address: ReplyAddress = ADDRESS) -> dict[str, Any]:
    return {REPLY_HEADER: address.header()}


@pytest.mark.usefixtures("embedded_worker")
def test_a_request_gets_its_result_once_and_each_duplicate_gets_the_stored_result(
    broker_redis: redis.Redis,
) -> None:
    from tasks.checkins import resolve_checkin
    from tasks.idempotency import done_key

    tweet = checkin_tweet("15001", "Reply01")
    first = resolve_checkin.apply_async(
        args=(tweet,), kwargs={"city": "nyc"}, headers=_headers()
    ).get(timeout=TIMEOUT)

    (reply,) = outbox_replies(broker_redis)
    assert (reply.address, reply.status) == (ADDRESS, ReplyStatus.OK)
    assert json.loads(reply.payload) == first
    assert broker_redis.get(done_key("checkin:15001")) == reply.payload

    # A redelivered copy (another task id, as the sweeper's or a spool's copy may have).
    again = resolve_checkin.apply_async(
        args=(tweet,), kwargs={"city": "nyc"}, headers=_headers()
    ).get(timeout=TIMEOUT)
    assert again == {"duplicate": True, "identity": "checkin:15001"}
    replies = outbox_replies(broker_redis)
    assert len(replies) == 2
    assert replies[1] == reply, "the duplicate replies with the first copy's result"
    assert resolved_announcements(broker_redis, "15001") == 1


@pytest.mark.usefixtures("embedded_worker")
def test_a_task_that_is_no_request_leaves_no_reply_and_a_plain_marker(
    broker_redis: redis.Redis,
) -> None:
    from tasks.checkins import resolve_checkin
    from tasks.idempotency import done_key

    resolve_checkin.delay(checkin_tweet("15002", "Reply02")).get(timeout=TIMEOUT)
    assert outbox_replies(broker_redis) == []
    assert broker_redis.get(done_key("checkin:15002")) == b"1"

    # A request duplicating it: the result was not kept, so it gets the duplicate answer.
    resolve_checkin.apply_async(args=(checkin_tweet("15002", "Reply02"),), headers=_headers()).get(
        timeout=TIMEOUT
    )
    (reply,) = outbox_replies(broker_redis)
    assert reply.status is ReplyStatus.OK
    assert json.loads(reply.payload) == {"duplicate": True, "identity": "checkin:15002"}


@pytest.mark.usefixtures("embedded_worker")
def test_a_retried_request_replies_once_when_it_commits(broker_redis: redis.Redis) -> None:
    task_id = str(uuid.uuid4())
    result = reply_tasks.commit_after_a_retry.apply_async(
        args=({"id": "r-1"},), headers=_headers(), task_id=task_id
    ).get(timeout=TIMEOUT)

    assert result["retries"] == 1
    (reply,) = outbox_replies(broker_redis)
    assert json.loads(reply.payload) == result
    assert broker_redis.lrange(reply_tasks.effects_key(), 0, -1) == [task_id.encode()]

    # The same task id again (a Celery redelivery): no second effect, the same reply. (Its
    # result is the first copy's already: the reply is what says it ran.)
    reply_tasks.commit_after_a_retry.apply_async(
        args=({"id": "r-1"},), headers=_headers(), task_id=task_id
    )
    wait_for(lambda: len(outbox_replies(broker_redis)) == 2, TIMEOUT, "the duplicate's reply")
    assert outbox_replies(broker_redis) == [reply, reply]
    assert broker_redis.llen(reply_tasks.effects_key()) == 1


@pytest.mark.usefixtures("embedded_worker")
def test_a_request_that_fails_for_good_gets_a_failed_reply(broker_redis: redis.Redis) -> None:
    pending = reply_tasks.fail_for_good.apply_async(args=({"id": "f-1"},), headers=_headers())
    wait_for(lambda: len(outbox_replies(broker_redis)) == 1, TIMEOUT, "the FAILED reply")

    (reply,) = outbox_replies(broker_redis)
    assert (reply.address, reply.status) == (ADDRESS, ReplyStatus.FAILED)
    assert json.loads(reply.payload) == {
        "error": {
            "reason": "task_failed",
            "detail": "ValueError: cannot handle f-1",
            "task_id": pending.id,
        }
    }
    # The same failure without a request: no reply.
    plain = reply_tasks.fail_for_good.delay({"id": "f-2"})
    wait_for(lambda: plain.state == "FAILURE", TIMEOUT, "the second failure recorded")
    assert len(outbox_replies(broker_redis)) == 1


@pytest.mark.usefixtures("embedded_worker")
def test_a_task_without_run_once_replies_after_it_returns(broker_redis: redis.Redis) -> None:
    result = reply_tasks.echo.apply_async(args=({"id": "e-1"},), headers=_headers()).get(
        timeout=TIMEOUT
    )
    reply_tasks.echo.delay({"id": "e-2"}).get(timeout=TIMEOUT)

    (reply,) = outbox_replies(broker_redis)
    assert reply.status is ReplyStatus.OK
    assert json.loads(reply.payload) == result == {"echo": {"id": "e-1"}}


def test_a_gevent_worker_replies_from_the_greenlet_running_the_task(
    broker_redis: redis.Redis, standin: object, worker: object
) -> None:
    """The recommended worker, in a process of its own: each greenlet finds its own request."""
    from tasks.checkins import resolve_checkin

    addresses = [ReplyAddress(f"test/replies/g{n}", f"corr-{n}".encode()) for n in range(8)]
    results = [
        resolve_checkin.apply_async(
            args=(checkin_tweet(f"1510{n}", f"Gevent{n}"),), headers=_headers(address)
        )
        for n, address in enumerate(addresses)
    ]
    documents = [pending.get(timeout=TIMEOUT) for pending in results]

    outbox = outbox_replies(broker_redis)
    assert len(outbox) == len(addresses)
    replies = {reply.address: json.loads(reply.payload) for reply in outbox}
    assert replies == dict(zip(addresses, documents, strict=True))
