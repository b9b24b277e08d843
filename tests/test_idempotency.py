"""Duplicates of a task, however they arise, never repeat its effect, and are counted."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import pytest
import redis
from redis.client import Pipeline

from rig.processes import wait_for
from rig.servers import RedisServer
from tests.conftest import checkin_tweet, load_checkin

if TYPE_CHECKING:
    from tasks.idempotency import Writes

TIMEOUT = 30


@pytest.mark.usefixtures("embedded_worker")
def test_the_same_checkin_sent_three_times_takes_effect_once(broker_redis: redis.Redis) -> None:
    from tasks.checkins import resolve_checkin, resolved_stream
    from tasks.idempotency import duplicates_key

    results = [resolve_checkin.delay(checkin_tweet("7001", "Dup0001")) for _ in range(3)]
    values = [result.get(timeout=TIMEOUT) for result in results]

    duplicate = {"duplicate": True, "identity": "checkin:7001"}
    assert sorted(values, key=len) == [duplicate, duplicate, load_checkin(broker_redis, "7001")]
    assert broker_redis.xlen(resolved_stream()) == 1
    assert int(broker_redis.hget(duplicates_key(), "tasks.checkins.resolve_checkin") or 0) == 2


def test_copies_racing_to_commit_let_exactly_one_through(broker_redis: redis.Redis) -> None:
    from tasks.idempotency import commit_once

    barrier = threading.Barrier(8)
    wins: list[bool] = []

    def attempt(n: int) -> None:
        barrier.wait(timeout=10)
        won = commit_once("race:1", lambda pipe: pipe.rpush("race-effects", n))
        wins.append(won)

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    wait_for(lambda: len(wins) == 8, TIMEOUT, "every racer to finish")
    assert wins.count(True) == 1
    assert broker_redis.llen("race-effects") == 1


def test_redis_lost_mid_commit_is_not_taken_for_a_duplicate(
    private_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py reports a connection lost while watching as WatchError, as if another copy had
    committed; the task would then fail for good on a done-marker that is not there."""
    import tasks.idempotency

    client = redis.Redis.from_url(private_redis.url)
    monkeypatch.setattr(tasks.idempotency, "store_redis", lambda: client)

    def writes_as_redis_restarts(pipe: Pipeline) -> None:
        private_redis.kill()
        private_redis.start()
        pipe.rpush("effects", 1)

    with pytest.raises(redis.ConnectionError):
        tasks.idempotency.commit_once("lost:1", writes_as_redis_restarts)
    assert client.llen("effects") == 0
    assert tasks.idempotency.commit_once("lost:1", lambda pipe: pipe.rpush("effects", 1))
    assert client.llen("effects") == 1


def test_a_planned_commit_whose_watched_key_keeps_moving_goes_back_to_its_queue(
    broker_redis: redis.Redis,
) -> None:
    from celery.exceptions import Reject

    from tasks.idempotency import MAX_COMMIT_ATTEMPTS, done_key, run_once_planned

    def plan_while_another_commit_moves_the_key(pipe: Pipeline) -> tuple[dict[str, int], Writes]:
        broker_redis.incr("moving")
        return {"n": 1}, lambda tx: tx.rpush("effects", 1)

    with pytest.raises(Reject):
        run_once_planned(
            "t", "id-1", "moving:1", plan_while_another_commit_moves_the_key, ["moving"]
        )
    assert int(broker_redis.get("moving") or 0) == MAX_COMMIT_ATTEMPTS
    assert broker_redis.llen("effects") == 0
    assert broker_redis.exists(done_key("moving:1")) == 0


@pytest.mark.usefixtures("embedded_worker")
def test_a_done_marker_is_a_presence_flag_not_the_result(broker_redis: redis.Redis) -> None:
    """A marker lives for the whole idempotency window (7 days), once per message: its size is
    most of what the window costs in Redis memory."""
    from tasks.checkins import resolve_checkin
    from tasks.idempotency import MARKER_MAX_BYTES, done_key
    from tasks.store import effect_key

    tweet_id = "900000000000000017"
    result = resolve_checkin.delay(checkin_tweet(tweet_id, "Size0017")).get(timeout=TIMEOUT)

    marker = int(broker_redis.memory_usage(done_key(f"checkin:{tweet_id}")) or 0)
    effect = int(broker_redis.memory_usage(effect_key("checkin", tweet_id)) or 0)
    stored = int(broker_redis.memory_usage(f"celery-task-meta-{result['task_id']}") or 0)
    print(f"memory per check-in: done_marker={marker} effect={effect} result={stored} bytes")
    assert marker <= MARKER_MAX_BYTES, f"a done-marker takes {marker} bytes"
