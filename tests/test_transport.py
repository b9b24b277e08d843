"""taskhub's kombu transport against the real Redis: its pool waits for a free connection rather
than raising (which dropped the connection and a task in flight); one client serves a channel."""

from __future__ import annotations

import os
import threading
import time

import redis
from kombu.connection import Connection

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
