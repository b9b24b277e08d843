"""The ledger catches tasks lost between kombu's BRPOP and its unacked record, and nothing else."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import redis
from celery.contrib.testing.worker import start_worker

from bridge.outbound import Outbound
from bridge.publisher import RedisPublisher
from bridge.sweeper import MAX_SWEEPS, SCAN_LIMIT, SWEEP_BATCH, Sweeper
from rig.processes import start_worker as start_worker_process
from rig.processes import wait_for
from rig.servers import RedisServer
from taskhub import redis_keys
from taskhub.deadletters import DEFAULT_MAXLEN, DeadLetterStream
from taskhub.demo.standin import StandinServer
from taskhub.ledger import LedgerEntry, LedgerKeys, record
from taskhub.settings import get_settings
from taskhub.task_messages import MessageBuilder, TaskCall, deterministic_task_id
from tests.conftest import checkin_tweet, stored_checkins

TASK = "tasks.checkins.resolve_checkin"


def _outbound(tweet_id: str, queue: str = "checkins") -> Outbound:
    tweet = checkin_tweet(tweet_id, "Ledg" + tweet_id[-3:])
    call = TaskCall(TASK, deterministic_task_id(TASK, tweet_id), queue, (tweet,), {})
    return Outbound.task(call, MessageBuilder())


@pytest.fixture
def keys() -> LedgerKeys:
    return LedgerKeys.for_prefix(get_settings().key_prefix)


@pytest.fixture
def publisher(broker_redis: redis.Redis, keys: LedgerKeys) -> RedisPublisher:
    return RedisPublisher(get_settings().broker_url.get_secret_value(), ["checkins"], keys)


def _pop(client: redis.Redis) -> bytes:
    raw = client.rpop("checkins")
    assert isinstance(raw, bytes)
    return raw


def _letters(client: redis.Redis, maxlen: int = DEFAULT_MAXLEN) -> DeadLetterStream:
    return DeadLetterStream(client, get_settings().key_prefix, maxlen)


def _sweeper(client: redis.Redis, keys: LedgerKeys, maxlen: int = DEFAULT_MAXLEN) -> Sweeper:
    return Sweeper(client, keys, ["checkins"], grace=0, letters=_letters(client, maxlen))


def test_a_ledger_entry_in_the_json_form_of_older_bridges_still_reads() -> None:
    raw = json.dumps({"queue": "checkins", "body": '{"x": 1}', "sweeps": 2})
    entry = LedgerEntry("id-1", "checkins", '{"x": 1}', 2)
    assert LedgerEntry.decode("id-1", raw.encode()) == entry
    assert LedgerEntry.decode("id-1", entry.encode()) == entry


def test_only_the_task_lost_after_leaving_its_queue_is_enqueued_again(
    broker_redis: redis.Redis, publisher: RedisPublisher, keys: LedgerKeys
) -> None:
    lost, held, queued = _outbound("801"), _outbound("802"), _outbound("803")
    publisher.land([lost, held, queued])
    assert broker_redis.zcard(keys.index) == 3

    # A worker BRPOPs `lost` and dies before recording it; another holds `held` unacked.
    assert json.loads(_pop(broker_redis))["headers"]["id"] == lost.task_id
    held_raw = _pop(broker_redis)
    held_tag = json.loads(held_raw)["properties"]["delivery_tag"]
    broker_redis.hset(redis_keys.KOMBU_UNACKED, held_tag, held_raw)

    assert _sweeper(broker_redis, keys).sweep() == 1
    ids = [json.loads(raw)["headers"]["id"] for raw in broker_redis.lrange("checkins", 0, -1)]
    assert sorted(ids) == sorted([queued.task_id, lost.task_id])
    again = json.loads(broker_redis.lindex("checkins", 0) or "")
    assert again["headers"]["id"] == lost.task_id
    assert (
        again["properties"]["delivery_tag"] != json.loads(lost.body)["properties"]["delivery_tag"]
    )


def test_a_task_that_never_completes_is_dead_lettered_after_max_sweeps(
    broker_redis: redis.Redis, publisher: RedisPublisher, keys: LedgerKeys
) -> None:
    publisher.land([_outbound("804")])
    sweeper = _sweeper(broker_redis, keys)
    for _ in range(MAX_SWEEPS):
        broker_redis.rpop("checkins")
        assert sweeper.sweep(now=time.time() + 1) == 1
    broker_redis.rpop("checkins")
    assert sweeper.sweep(now=time.time() + 1) == 0
    assert broker_redis.zcard(keys.index) == 0
    entries = broker_redis.xrange(_letters(broker_redis).key) or []
    assert [(fields or {}).get(b"reason") for _, fields in entries] == [b"never_completed"]


def test_a_completed_task_is_settled(
    broker_redis: redis.Redis,
    publisher: RedisPublisher,
    keys: LedgerKeys,
    standin: StandinServer,
) -> None:
    from rig.processes import wait_for
    from taskhub.celery import app

    publisher.land([_outbound("805")])
    with start_worker(app, pool="threads", concurrency=2, perform_ping_check=False):
        wait_for(lambda: broker_redis.zcard(keys.index) == 0, 30, "the ledger entry settled")
    assert broker_redis.hlen(keys.entries) == 0


def test_a_backlog_waiting_in_its_queue_is_never_enqueued_again(
    broker_redis: redis.Redis, publisher: RedisPublisher, keys: LedgerKeys
) -> None:
    backlog = [_outbound(str(900 + n)) for n in range(50)]
    for start in range(0, 50, 10):
        publisher.land(backlog[start : start + 10])
    sweeper = _sweeper(broker_redis, keys)
    for _ in range(3):
        broker_redis.rpop("checkins")  # a worker takes the oldest and loses it
        assert sweeper.sweep(now=time.time() + 60) == 1  # that one, not the waiting backlog
    assert sweeper.requeued == 3
    assert broker_redis.llen("checkins") == 50


@pytest.mark.parametrize(
    ("exception", "settled"),
    [(ValueError("bad tweet"), True), (redis.ConnectionError("Redis went away"), False)],
    ids=["task-error", "redis-unreachable"],
)
def test_only_a_failure_of_the_task_itself_settles_it(
    broker_redis: redis.Redis,
    publisher: RedisPublisher,
    keys: LedgerKeys,
    exception: BaseException,
    settled: bool,
) -> None:
    from tasks.ledger import settle_failed

    item = _outbound("806")
    publisher.land([item])
    settle_failed(task_id=item.task_id, exception=exception)
    assert (broker_redis.zscore(keys.index, item.task_id) is None) is settled


def test_a_task_landed_twice_keeps_the_backlog_between_its_copies_in_place(
    broker_redis: redis.Redis, publisher: RedisPublisher, keys: LedgerKeys
) -> None:
    first = _outbound("820")
    between = [_outbound(str(821 + n)) for n in range(20)]
    publisher.land([first])
    publisher.land(between)
    publisher.land([_outbound("820")])  # MQTT redelivered it after a bridge crash
    sweeper = _sweeper(broker_redis, keys)
    assert json.loads(broker_redis.lindex("checkins", -1) or "")["headers"]["id"] == first.task_id
    assert sweeper.sweep(now=time.time() + 60) == 0
    assert broker_redis.llen("checkins") == 22


def test_a_foreign_message_at_the_tail_makes_the_sweep_judge_nothing(
    broker_redis: redis.Redis, publisher: RedisPublisher, keys: LedgerKeys
) -> None:
    publisher.land([_outbound("840")])
    broker_redis.rpop("checkins")  # lost...
    broker_redis.rpush("checkins", b"\x80\x04not json")  # ...behind something unreadable
    assert _sweeper(broker_redis, keys).sweep(now=time.time() + 60) == 0


def test_with_the_store_on_another_redis_every_task_settles_once_and_nothing_is_swept(
    broker_redis: redis.Redis,
    publisher: RedisPublisher,
    keys: LedgerKeys,
    private_redis: RedisServer,
    standin: StandinServer,
    log_dir: Path,
) -> None:
    from tasks.checkins import resolved_stream
    from tasks.idempotency import duplicates_key

    store = redis.Redis.from_url(private_redis.url)
    tweet_ids = [str(860 + n) for n in range(3)]
    publisher.land([_outbound(tweet_id) for tweet_id in tweet_ids])
    worker = start_worker_process(
        "store-elsewhere", log_dir, {"TASKHUB_STORE_URL": private_redis.url}
    )
    try:
        wait_for(lambda: stored_checkins(store, tweet_ids) == 3, 30, "3 check-ins in the store")
        wait_for(lambda: broker_redis.zcard(keys.index) == 0, 30, "the ledger settled")
        # Delivered again, as after a crash between the store's commit and the ledger's settle.
        publisher.land([_outbound(tweet_ids[0])])
        wait_for(
            lambda: (
                int(store.hget(duplicates_key(), TASK) or 0) == 1
                and broker_redis.zcard(keys.index) == 0
            ),
            30,
            "the copy absorbed and its entry settled",
        )
    finally:
        worker.kill()
    assert broker_redis.hlen(keys.entries) == 0
    assert _sweeper(broker_redis, keys).sweep(now=time.time() + 3600) == 0
    assert broker_redis.xlen(redis_keys.deadletters(get_settings().key_prefix)) == 0, (
        "no dead letters"
    )
    assert store.xlen(resolved_stream()) == 3, "each effect once"
    assert stored_checkins(broker_redis, tweet_ids) == 0, "effects only in the store"


def _queued_ids(client: redis.Redis) -> list[str]:
    return [json.loads(raw)["headers"]["id"] for raw in client.lrange("checkins", 0, -1)]


def test_a_task_a_worker_requeued_is_not_enqueued_again_while_it_waits(
    broker_redis: redis.Redis, publisher: RedisPublisher, keys: LedgerKeys
) -> None:
    from taskhub.celery import app

    waiting = [_outbound(str(870 + n)) for n in range(5)]
    publisher.land(waiting)
    with app.connection_for_read() as connection:
        # What a worker does with Reject(requeue=True): kombu puts it at the queue's far end.
        message = connection.default_channel.basic_get("checkins", no_ack=False)
        assert message.headers["id"] == waiting[0].task_id
        message.reject(requeue=True)
    assert _queued_ids(broker_redis)[0] == waiting[0].task_id, "requeued at the far end"

    swept = _sweeper(broker_redis, keys).sweep(now=time.time() + 60)
    assert sorted(_queued_ids(broker_redis)) == sorted(item.task_id for item in waiting)
    assert swept == 0


def test_entries_of_a_queue_no_route_names_are_dead_lettered_and_hide_no_lost_task(
    broker_redis: redis.Redis, publisher: RedisPublisher, keys: LedgerKeys
) -> None:
    retired = [_outbound(str(10_000 + n), queue="retired") for n in range(SWEEP_BATCH)]
    with broker_redis.pipeline() as pipe:  # recorded while a route still named "retired"
        entries = [LedgerEntry(item.task_id, "retired", item.body) for item in retired]
        record(pipe, keys, entries, now=time.time() - 600)
        pipe.execute()
    lost = _outbound("880")
    publisher.land([lost])
    broker_redis.rpop("checkins")

    assert _sweeper(broker_redis, keys).sweep(now=time.time() + 60) == 1
    assert _queued_ids(broker_redis) == [lost.task_id]
    letters = broker_redis.xrange(_letters(broker_redis).key) or []
    assert {(fields or {}).get(b"reason") for _, fields in letters} == {b"unknown_queue"}
    assert len(letters) == SWEEP_BATCH
    assert broker_redis.zrange(keys.index, 0, -1) == [lost.task_id.encode()]


def test_the_sweepers_dead_letters_keep_to_the_configured_cap(
    broker_redis: redis.Redis, keys: LedgerKeys
) -> None:
    retired = [_outbound(str(20_000 + n), queue="retired") for n in range(SWEEP_BATCH)]
    with broker_redis.pipeline() as pipe:
        entries = [LedgerEntry(item.task_id, "retired", item.body) for item in retired]
        record(pipe, keys, entries, now=time.time() - 600)
        pipe.execute()

    _sweeper(broker_redis, keys, maxlen=100).sweep(now=time.time() + 60)

    assert broker_redis.hlen(keys.entries) == 0, "every entry dead-lettered"
    # Trimmed approximately (whole stream nodes of 100 entries), so a little over the cap.
    assert len(_letters(broker_redis)) <= 200, "TASKHUB_BRIDGE__DEADLETTER_MAXLEN ignored"


def _two_queues(keys: LedgerKeys, scan_limit: int = SCAN_LIMIT) -> tuple[RedisPublisher, Sweeper]:
    url = get_settings().broker_url.get_secret_value()
    queues = ["checkins", "sensors"]
    client = redis.Redis.from_url(url)
    sweeper = Sweeper(client, keys, queues, 0, _letters(client), scan_limit=scan_limit)
    return RedisPublisher(url, queues, keys), sweeper


def test_a_window_full_of_one_queues_backlog_hides_no_lost_task_of_another(
    broker_redis: redis.Redis, keys: LedgerKeys
) -> None:
    publisher, sweeper = _two_queues(keys)
    backlog = [_outbound(str(20_000 + n), queue="sensors") for n in range(SWEEP_BATCH + 100)]
    publisher.land(backlog)  # waiting for a slow worker
    lost = _outbound("951")
    publisher.land([lost])
    broker_redis.rpop("checkins")

    assert sweeper.sweep(now=time.time() + 60) == 1
    assert _queued_ids(broker_redis) == [lost.task_id]
    assert broker_redis.llen("sensors") == len(backlog)


def test_each_pass_reads_on_from_where_the_last_one_stopped(
    broker_redis: redis.Redis, keys: LedgerKeys
) -> None:
    publisher, sweeper = _two_queues(keys, scan_limit=10)
    publisher.land([_outbound(str(890 + n), queue="sensors") for n in range(25)])  # waiting
    lost = _outbound("950")
    publisher.land([lost])
    broker_redis.rpop("checkins")

    passes = [sweeper.sweep(now=time.time() + 60) for _ in range(3)]
    assert passes == [0, 0, 1], "26 entries, 10 read a pass: the third pass reaches the lost one"
    assert _queued_ids(broker_redis) == [lost.task_id]
    assert broker_redis.llen("sensors") == 25
    assert [sweeper.sweep(now=time.time() + 60) for _ in range(3)] == [0, 0, 0]
