"""taskhub's kombu transport against the real Redis: its pool waits for a free connection rather
than raising (which dropped the connection and a task in flight); one client serves a channel."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import pytest
import redis
from kombu.connection import Connection
from kombu.entity import Queue

from rig.servers import RedisServer

pytestmark = pytest.mark.e2e  # every test talks to a real Redis

TRANSPORT = "taskhub.transport:Transport"


def test_the_broker_pool_waits_for_a_free_connection_rather_than_raising() -> None:
    url = os.environ["TASKHUB_BROKER_URL"]
    with Connection(url, transport=TRANSPORT, transport_options={"max_connections": 1}) as conn:
        channel = conn.default_channel
        pool = channel.pool
        assert isinstance(pool, redis.BlockingConnectionPool)
        held = pool.get_connection()
        threading.Timer(0.3, pool.release, args=(held,)).start()
        started = time.monotonic()
        with channel.conn_or_acquire() as client:
            assert client.ping()
        assert time.monotonic() - started >= 0.25, "it did not wait for the held connection"


def test_one_client_object_serves_every_command_of_a_channel() -> None:
    url = os.environ["TASKHUB_BROKER_URL"]
    with Connection(url, transport=TRANSPORT) as conn:
        channel = conn.default_channel
        assert channel._create_client() is channel._create_client()


def test_a_closed_channel_says_connection_error_not_attribute_error() -> None:
    """A greenlet acking or restoring on a channel whose connection just closed (Redis killed)
    must meet an error Celery reconnects after: kombu's AttributeError ended the worker."""
    url = os.environ["TASKHUB_BROKER_URL"]
    conn = Connection(url, transport=TRANSPORT)
    channel: Any = conn.default_channel
    errors = conn.connection_errors
    conn.close()
    with pytest.raises(errors), channel.conn_or_acquire() as client:
        client.ping()


def test_a_task_given_back_while_redis_is_full_stays_unacked_without_waiting(
    private_redis: RedisServer,
) -> None:
    """kombu moves a rejected task from the unacked hash to its queue in one transaction: at
    maxmemory the move is refused and the task stays in the hash. Waiting for memory instead
    held it past its hard time limit, and Celery acked it as failed."""
    with Connection(
        private_redis.url, transport=TRANSPORT, transport_options={"visibility_timeout": 0}
    ) as conn:
        queue = Queue("given-back", routing_key="given-back")
        with conn.Producer() as producer:
            producer.publish({"n": 1}, routing_key="given-back", declare=[queue])
        message = conn.default_channel.basic_get("given-back", no_ack=False)
        assert message is not None
        admin = redis.Redis.from_url(private_redis.url)
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", int(admin.info("memory")["used_memory"]) - 1)
        try:
            started = time.monotonic()
            message.reject(requeue=True)
            assert time.monotonic() - started < 1.0, "the reject waited for memory"
            assert admin.hlen("unacked") == 1
            assert admin.llen("given-back") == 0
        finally:
            admin.config_set("maxmemory", 0)
        conn.default_channel.qos.restore_visible(num=10, interval=0)  # as after the timeout
        assert admin.llen("given-back") == 1
        assert admin.hlen("unacked") == 0
        admin.close()
