"""The backlog autoscaler with a real gevent worker: the pool grows within a tick of a burst and
shrinks back after it, and no task is lost or run twice on the way; and the backlog it reads."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from rig.processes import Process, start_worker, wait_for
from taskhub import redis_keys
from taskhub.demo.standin import StandinServer
from taskhub.settings import StandinSettings, get_settings
from tests.conftest import checkin_tweet, stored_checkins

pytestmark = pytest.mark.e2e

BURST = 400
TIMEOUT = 90
RESIZE = re.compile(r"autoscale: pool (\d+) -> (\d+)")


@pytest.fixture
def slow_upstream() -> Iterator[StandinServer]:
    server = StandinServer(StandinSettings(port=0, venue_port=0, latency_ms=50))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def scaling_worker(
    slow_upstream: StandinServer, log_dir: Path, broker_redis: redis.Redis
) -> Iterator[Process]:
    short, venue = slow_upstream.ports
    env = {
        "TASKHUB_HTTP__SHORTLINK_BASE_URL": f"http://127.0.0.1:{short}/s",
        "TASKHUB_HTTP__VENUE_API_BASE_URL": f"http://127.0.0.1:{venue}/v2",
        "TASKHUB_AUTOSCALE__TICK": "0.2",
        "TASKHUB_AUTOSCALE__SHRINK_AFTER": "2",
    }
    process = start_worker("scaling", log_dir, env, autoscale="100,2")
    yield process
    process.kill()


def _resizes(worker: Process) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in RESIZE.findall(worker.output_of_last_start())]


def test_the_pool_grows_within_a_tick_of_a_burst_and_shrinks_back_after_it(
    scaling_worker: Process, broker_redis: redis.Redis
) -> None:
    from taskhub.task_messages import MessageBuilder, TaskCall, deterministic_task_id
    from tasks.checkins import resolve_checkin

    task = resolve_checkin.name
    builder = MessageBuilder.for_tasks(resolve_checkin.app, [task])
    ids = [str(8_100_000 + n) for n in range(BURST)]
    calls = [
        TaskCall(
            task, deterministic_task_id(task, i), "checkins", (checkin_tweet(i, f"Sc{i}"),), {}
        )
        for i in ids
    ]
    assert _resizes(scaling_worker) == [], "the idle worker resized before the burst"
    queued = time.monotonic()
    broker_redis.lpush("checkins", *[builder.build(call) for call in calls])

    wait_for(lambda: _resizes(scaling_worker) != [], 5, "the pool to grow")
    grown_in = time.monotonic() - queued
    first = _resizes(scaling_worker)[0]
    assert first[0] == 2, first
    assert first[1] >= 50, f"grew one slot at a time: {first}"

    wait_for(lambda: stored_checkins(broker_redis, ids) == BURST, TIMEOUT, "the burst")
    wait_for(lambda: _resizes(scaling_worker)[-1][1] == 2, 30, "the pool to shrink back")
    resizes = _resizes(scaling_worker)
    assert max(after for _, after in resizes) == 100, resizes
    resolved = redis_keys.checkins_resolved(get_settings().key_prefix)
    assert broker_redis.xlen(resolved) == BURST, "a task ran twice"
    output = scaling_worker.output()
    assert "WorkerLostError" not in output
    assert "Terminated" not in output
    print(f"autoscale: grew in {grown_in:.2f}s, resizes {resizes}")


def test_the_backlog_is_the_queues_depth_and_their_oldest_tasks_age(
    broker_redis: redis.Redis,
) -> None:
    from taskhub.autoscale import Backlog
    from tasks.checkins import resolve_checkin

    backlog = Backlog(broker_redis, ["checkins", "sensors"])
    assert backlog.read() == (0, 0.0)
    resolve_checkin.delay(checkin_tweet("8200001", "Age0001"))
    time.sleep(0.2)  # the age being measured, not a wait for an event
    resolve_checkin.delay(checkin_tweet("8200002", "Age0002"))
    depth, age = backlog.read()
    assert depth == 2
    assert 0.2 <= age < 5


def _pool_stats(name: str) -> tuple[int, int, int] | None:
    """The worker's (pool max-concurrency, autoscaler current, pool processes), as
    `celery inspect stats` shows them; None until it answers."""
    from taskhub.celery import app

    answers = app.control.inspect(timeout=1).stats() or {}
    stats = next((v for k, v in answers.items() if k.startswith(name)), None)
    if stats is None:
        return None
    pool = stats["pool"]
    return pool["max-concurrency"], stats["autoscaler"]["current"], len(pool["processes"])


def test_a_grown_prefork_pool_shows_one_size_in_inspect_stats(
    log_dir: Path, broker_redis: redis.Redis
) -> None:
    from tasks.sensors import record_reading

    for seq in range(50):  # a backlog past MAX: the pool grows to MAX with the first task
        record_reading.delay({"seq": seq, "value": 1.0, "ts": "2026-01-01T00:00:00Z"})
    worker = start_worker("prefork-stats", log_dir, {}, "-P", "prefork", "--autoscale=3,1")
    try:
        wait_for(lambda: (_pool_stats("prefork-stats") or (0, 0))[1] == 3, 30, "a pool of 3")
        assert _pool_stats("prefork-stats") == (3, 3, 3)
    finally:
        worker.kill()
