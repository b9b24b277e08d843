"""A Redis at maxmemory (noeviction) stops neither the bridge nor the workers: the bridge pauses
before Redis refuses it, and everything lands and runs once memory is freed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis

from rig.processes import (
    BRIDGE_READY,
    WORKER_READY,
    Process,
    celery,
    python_module,
    start_worker,
    wait_for,
)
from rig.servers import MosquittoServer, RedisServer
from taskhub import redis_keys
from taskhub.settings import get_settings
from tests.conftest import checkin_tweet, publish_checkins, stored_checkins

if TYPE_CHECKING:
    from taskhub.demo.standin import StandinServer

pytestmark = pytest.mark.e2e

MAXMEMORY = 32 * 1024 * 1024
FILLER_VALUE_BYTES = 10_000
FULL_MARGIN_BYTES = 1024 * 1024
TIMEOUT = 60


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def fill(client: redis.Redis, fraction: float) -> list[str]:
    """Fill Redis with junk up to `fraction` of its maxmemory; returns the junk's keys."""
    keys: list[str] = []
    while used_memory(client) < fraction * MAXMEMORY:
        batch = [f"filler:{len(keys) + n}" for n in range(10)]
        client.mset(dict.fromkeys(batch, b"x" * FILLER_VALUE_BYTES))
        keys += batch
    return keys


def make_full(client: redis.Redis) -> None:
    """Leave Redis refusing writes until `make_room`, however little its clients free."""
    client.config_set("maxmemory", used_memory(client) - FULL_MARGIN_BYTES)


def make_room(client: redis.Redis) -> None:
    client.config_set("maxmemory", MAXMEMORY)


def refusals(client: redis.Redis) -> int:
    """How many commands Redis has refused for lack of memory."""
    stat = client.info("errorstats").get("errorstat_OOM", {})
    return int(stat.get("count", 0))


def keeps_trying(worker: Process, client: redis.Redis) -> None:
    """Await several refusals after the worker said it waits: it is alive and trying again."""
    worker.wait_output("waits until memory is freed", timeout=TIMEOUT)
    seen = refusals(client)
    wait_for(lambda: refusals(client) >= seen + 3, TIMEOUT, "the worker to try again")
    assert worker.popen is not None
    assert worker.popen.poll() is None, "the worker exited"


def enqueue_checkins(url: str, count: int, id_base: int) -> list[str]:
    """Send `count` check-in tasks to the Redis at `url`, as any program would."""
    from taskhub.celery import app
    from tasks.checkins import resolve_checkin

    with app.connection_for_write(url) as connection:
        for n in range(count):
            tweet = checkin_tweet(str(id_base + n), f"Full{id_base + n}")
            resolve_checkin.apply_async((tweet,), connection=connection)
    return [str(id_base + n) for n in range(count)]


def redis_env(server: RedisServer) -> dict[str, str]:
    return {"TASKHUB_BROKER_URL": server.url, "TASKHUB_RESULT_BACKEND": server.url}


@pytest.fixture
def full_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own that refuses writes past MAXMEMORY."""
    server = RedisServer(tmp_path / "redis", maxmemory=MAXMEMORY)
    server.start()
    yield server
    server.stop()


def test_bridge_pauses_before_redis_refuses_and_lands_everything_once_memory_is_freed(
    full_redis: RedisServer, private_mosquitto: MosquittoServer, log_dir: Path
) -> None:
    client = redis.Redis.from_url(full_redis.url)
    filler = fill(client, 0.75)
    ledger = redis_keys.ledger(get_settings().key_prefix)
    total = 3000  # about 3 KB each in Redis (task and ledger entry): past maxmemory unpaused
    bridge = Process(
        "bridge",
        python_module("bridge"),
        log_dir,
        {
            **redis_env(full_redis),
            "TASKHUB_MQTT__PORT": str(private_mosquitto.port),
            "TASKHUB_MQTT__CLIENT_ID": f"{get_settings().mqtt.client_id}-full",
            "TASKHUB_BRIDGE__MAX_IN_FLIGHT": "200",
            "TASKHUB_MQTT__RECEIVE_MAXIMUM": "200",
            "TASKHUB_BRIDGE__BATCH_SIZE": "50",
        },
    ).start()
    try:
        bridge.wait_output(BRIDGE_READY, timeout=30, count=2)
        mqtt = get_settings().mqtt.model_copy(update={"port": private_mosquitto.port})
        publish_checkins(total, id_base=950_000, mqtt=mqtt)
        bridge.wait_output("pausing intake", timeout=TIMEOUT)
        paused_at = int(client.zcard(ledger))
        assert paused_at < total
        assert used_memory(client) < MAXMEMORY

        client.delete(*filler)
        wait_for(lambda: client.zcard(ledger) == total, TIMEOUT, "every message in redis")
    finally:
        bridge.terminate()
    print(f"redis full: paused after {paused_at} of {total} messages, none refused")
    assert "resuming intake" in bridge.output()
    assert "refused" not in bridge.output(), "redis refused a write the bridge should have held"
    assert "did not take" not in bridge.output()
    assert client.llen("checkins") == total


@pytest.mark.usefixtures("standin")
def test_a_worker_started_on_a_full_redis_waits_and_runs_its_tasks_once_memory_is_freed(
    full_redis: RedisServer, log_dir: Path
) -> None:
    client = redis.Redis.from_url(full_redis.url)
    tweet_ids = enqueue_checkins(full_redis.url, 10, id_base=960_000)
    make_full(client)
    worker = Process(
        "worker",
        celery(
            "worker",
            "-P",
            "gevent",
            "--autoscale=10,2",
            "-l",
            "INFO",
            "--without-mingle",
            "--without-gossip",
            "-n",
            f"full-{os.getpid()}@%h",
        ),
        log_dir,
        {"REMAP_SIGTERM": "SIGQUIT", **redis_env(full_redis)},
    ).start()
    try:
        keeps_trying(worker, client)
        assert stored_checkins(client, tweet_ids) == 0

        make_room(client)
        worker.wait_output(WORKER_READY, timeout=TIMEOUT)
        wait_for(lambda: stored_checkins(client, tweet_ids) == 10, TIMEOUT, "every check-in")
        assert worker.popen is not None
        assert worker.popen.poll() is None, "the worker exited"
    finally:
        worker.kill()
    assert "Unrecoverable error" not in worker.output()


def test_tasks_running_when_redis_fills_up_finish_once_memory_is_freed(
    full_redis: RedisServer, log_dir: Path, standin: StandinServer
) -> None:
    client = redis.Redis.from_url(full_redis.url)
    quick = standin.settings
    worker = start_worker("worker", log_dir, redis_env(full_redis))
    try:
        standin.settings = quick.model_copy(update={"latency_ms": 1000})
        tweet_ids = enqueue_checkins(full_redis.url, 10, id_base=970_000)
        wait_for(lambda: client.hlen("unacked") > 0, TIMEOUT, "tasks running")
        make_full(client)
        keeps_trying(worker, client)
        standin.settings = quick

        make_room(client)
        wait_for(lambda: stored_checkins(client, tweet_ids) == 10, TIMEOUT, "every check-in")
        assert worker.popen is not None
        assert worker.popen.poll() is None, "the worker exited"
    finally:
        standin.settings = quick
        worker.kill()
    from tasks.checkins import resolved_stream

    assert client.xlen(resolved_stream()) == 10, "each check-in takes effect once"
    assert "Unrecoverable error" not in worker.output()
