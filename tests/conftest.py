"""Test-run isolation and the shared fixtures: real Redis, real Mosquitto, real processes."""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis

from rig.isolation import configure_run, release_redis_db, use_servers
from rig.processes import BRIDGE_READY, WORKER_READY, Process, celery, python_module
from rig.servers import MosquittoServer, RedisServer

if TYPE_CHECKING:
    from taskhub.demo.standin import StandinServer
    from taskhub.replies import Reply
    from taskhub.settings import MqttSettings
    from tests.support.flower import Flower

_RUN: dict[str, object] = {}

SERVER_FIXTURES = frozenset({"broker_redis", "private_redis", "private_mosquitto"})
"""Fixtures that need a real server: a test using one (or a fixture built on one, such as
`worker` or `bridge`) is `e2e` without saying so."""


def pytest_configure(config: pytest.Config) -> None:
    # Before any test module imports taskhub: settings are read once per process. No server yet.
    _RUN["run_id"] = configure_run()


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if isinstance(item, pytest.Function) and SERVER_FIXTURES.intersection(item.fixturenames):
            item.add_marker(pytest.mark.e2e)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Claim this run's Redis database only if a test selected will use the servers: the unit
    tier (`-m "not e2e"`) runs with no server at all."""
    if session.config.option.collectonly:
        return
    if not any(item.get_closest_marker("e2e") for item in session.items):
        return
    from taskhub.settings import get_settings

    if get_settings.cache_info().currsize:
        raise pytest.UsageError(
            "a test module read taskhub's settings while being imported, before this run's Redis "
            "database was claimed: import what reads them inside the test or a fixture"
        )
    _RUN["db"] = use_servers(str(_RUN["run_id"]))


def pytest_unconfigure(config: pytest.Config) -> None:
    if "db" in _RUN:
        release_redis_db(int(str(_RUN["db"])), str(_RUN["run_id"]))


@pytest.fixture(scope="session")
def topic_prefix() -> str:
    return os.environ["TASKHUB_TOPIC_PREFIX"]


@pytest.fixture
def broker_redis() -> Iterator[redis.Redis]:
    """This run's own Redis database, emptied before each test that uses it."""
    client = redis.Redis.from_url(os.environ["TASKHUB_BROKER_URL"])
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(scope="session")
def standin() -> Iterator[StandinServer]:
    """The stand-in HTTP services in a thread of this process, on this run's two ports."""
    from taskhub.demo.standin import StandinServer
    from taskhub.settings import get_settings

    server = StandinServer(get_settings().standin)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def worker(log_dir: Path, broker_redis: redis.Redis) -> Iterator[Process]:
    """The recommended worker (`celery -A taskhub worker -P gevent --autoscale=...`), small."""
    process = Process(
        "worker",
        celery(
            "worker",
            "-P",
            "gevent",
            "--autoscale=50,4",
            "--loglevel=INFO",
            "--without-mingle",
            "--without-gossip",
            "-n",
            f"test-{os.getpid()}@%h",
        ),
        log_dir,
        {},
    ).start()
    try:
        process.wait_output(WORKER_READY, timeout=60)
        yield process
    finally:
        process.kill()


FIXTURE_SESSION_EXPIRY = 300
"""Seconds the broker keeps a killed fixture bridge's session: not the day a deployment asks."""


def start_bridge(log_dir: Path) -> Process:
    """`python -m bridge`, started and subscribed to every route, in an MQTT session of its own.

    A session shared with an earlier test's bridge, killed with messages still queued for it,
    handed them to this one: a flood test once counted 1,001 dead letters of 1,000.
    """
    client_id = f"{os.environ['TASKHUB_MQTT__CLIENT_ID']}-{uuid.uuid4().hex[:8]}"
    own_session = {
        "TASKHUB_MQTT__CLIENT_ID": client_id,
        "TASKHUB_MQTT__SESSION_EXPIRY": str(FIXTURE_SESSION_EXPIRY),
    }
    process = Process("bridge", python_module("bridge"), log_dir, own_session).start()
    try:
        process.wait_output(BRIDGE_READY, timeout=30, count=2)
    except BaseException:
        process.kill()
        raise
    return process


@pytest.fixture
def bridge(log_dir: Path, broker_redis: redis.Redis) -> Iterator[Process]:
    """A bridge of this test's own (`start_bridge`)."""
    process = start_bridge(log_dir)
    try:
        yield process
    finally:
        process.kill()


@pytest.fixture(autouse=True)
def _root_log_level_kept() -> Iterator[None]:
    """Put the root logger's level back after each test. An in-process Celery worker sets it to
    its own log level (ERROR) for good, and later tests in the same process then miss the
    warnings they assert on (caplog records what the root logger lets through)."""
    level = logging.root.level
    yield
    logging.root.setLevel(level)


@pytest.fixture
def embedded_worker(broker_redis: redis.Redis, standin: StandinServer) -> Iterator[None]:
    """A Celery worker in threads of this process, consuming this run's queues."""
    from celery.contrib.testing.worker import start_worker

    from taskhub.celery import app

    with start_worker(app, pool="threads", concurrency=4, perform_ping_check=False):
        yield


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own (AOF fsynced always), to kill and restart at will."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def flower(log_dir: Path, broker_redis: redis.Redis) -> Iterator[Flower]:
    """Flower on a free port behind a password of its own (tests/support/flower.py)."""
    from tests.support.flower import start_flower

    server = start_flower(log_dir)
    try:
        yield server
    finally:
        server.process.kill()


@pytest.fixture
def private_mosquitto(tmp_path: Path) -> Iterator[MosquittoServer]:
    """A Mosquitto of this test's own on the repo's config. The shared broker runs Mosquitto's
    defaults, which drop what they queue past 1000 messages per session."""
    server = MosquittoServer(tmp_path / "mosquitto")
    server.start()
    yield server
    server.stop()


def checkin_tweet(tweet_id: str, code: str) -> dict[str, Any]:
    """A valid check-in tweet whose short link is `code`."""
    return {
        "id": tweet_id,
        "text": f"I'm at somewhere http://4sq.com/{code}",
        "user": {"screen_name": "tester"},
        "created_at": "2026-11-22T10:00:00Z",
    }


def publish_checkins(
    count: int, id_base: int, rate: float = 0.0, mqtt: MqttSettings | None = None
) -> list[str]:
    """Publish `count` check-ins through a real MQTT client; returns their tweet ids."""
    from taskhub.demo.feed import checkin_tweets, publish
    from taskhub.settings import get_settings

    settings = get_settings()
    topic = settings.topic_prefix + "checkins/{city}/tweets"
    messages = checkin_tweets(count, id_base=id_base, topic=topic, seed=id_base)
    mqtt = mqtt or settings.mqtt
    assert publish(mqtt, messages, rate=rate, total=count, show_progress=False) == count
    return [str(id_base + n) for n in range(count)]


def stored_checkins(client: redis.Redis, tweet_ids: list[str]) -> int:
    """How many of `tweet_ids` have a stored resolved check-in."""
    from taskhub import redis_keys
    from taskhub.settings import get_settings

    prefix = get_settings().key_prefix
    keys = [redis_keys.effect(prefix, "checkin", tweet_id) for tweet_id in tweet_ids]
    return sum(int(client.exists(*keys[i : i + 500])) for i in range(0, len(keys), 500))


def resolved_announcements(client: redis.Redis, tweet_id: str) -> int:
    """Entries announcing `tweet_id` in the resolved stream: one per committed effect."""
    from tasks.checkins import resolved_stream

    entries = client.xrange(resolved_stream()) or []
    return sum(1 for _, fields in entries if (fields or {}).get(b"tweet_id") == tweet_id.encode())


def outbox_replies(client: redis.Redis) -> list[Reply]:
    """The replies waiting in this run's reply outbox, oldest first."""
    from taskhub.replies import Reply
    from tasks.replies import outbox_key

    return [Reply.from_entry(fields or {}) for _, fields in client.xrange(outbox_key()) or []]


def load_checkin(client: redis.Redis, tweet_id: str) -> dict[str, object] | None:
    from taskhub import redis_keys
    from taskhub.settings import get_settings

    raw = client.get(redis_keys.effect(get_settings().key_prefix, "checkin", tweet_id))
    return None if raw is None else dict(json.loads(raw))
