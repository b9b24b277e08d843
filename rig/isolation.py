"""Giving each test or benchmark run its own Redis database, topic prefix and MQTT client ids on
the shared servers, so runs on one machine never see each other's data; a test run gets its
database only when it uses the servers (tests/conftest.py decides after collection).
"""

from __future__ import annotations

import os
import socket
import tempfile
import uuid

import redis

REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
LOCK_KEY = "taskhub-tests:db:{}"
LOCK_TTL_SECONDS = 3 * 3600
FIRST_DB, LAST_DB = 1, 15


def claim_redis_db(run_id: str) -> int:
    """A database number no other live run holds; the claim lives in DB 0 with a TTL."""
    lock = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=0)
    for number in range(FIRST_DB, LAST_DB + 1):
        if lock.set(LOCK_KEY.format(number), run_id, nx=True, ex=LOCK_TTL_SECONDS):
            redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=number).flushdb()
            return number
    raise RuntimeError(f"all Redis databases {FIRST_DB}-{LAST_DB} are claimed by other test runs")


def release_redis_db(number: int, run_id: str) -> None:
    lock = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=0)
    redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=number).flushdb()
    if lock.get(LOCK_KEY.format(number)) == run_id.encode():
        lock.delete(LOCK_KEY.format(number))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# Where the unit tier's settings point (port 1: nothing listens there), so that a test that reaches
# for Redis or Mosquitto without the `e2e` marker fails at once on every machine, not only on one
# without servers.
UNREACHABLE_REDIS_URL = "redis://127.0.0.1:1/0"
UNREACHABLE_MQTT_PORT = "1"

MQTT_PORT_CHOSEN = "PYTEST_TASKHUB_MQTT_PORT"
"""Where the MQTT port the developer chose (empty: the default) waits while the unit tier runs:
in the environment, so xdist's workers, which configure again, still find it; not TASKHUB_, which
the settings would refuse as unknown."""


def configure_run() -> str:
    """Point every TASKHUB_ setting of this process (and its children) at this run's own space,
    with Redis and Mosquitto unreachable until `use_servers` claims them; returns the run's id.

    No connection is made: a run of the unit tier needs no server."""
    run_id = uuid.uuid4().hex[:10]
    standin_port, venue_port = free_port(), free_port()
    while venue_port == standin_port:
        venue_port = free_port()
    os.environ.setdefault(MQTT_PORT_CHOSEN, os.environ.get("TASKHUB_MQTT__PORT", ""))
    os.environ.update(
        {
            "TASKHUB_BROKER_URL": UNREACHABLE_REDIS_URL,
            "TASKHUB_RESULT_BACKEND": UNREACHABLE_REDIS_URL,
            "TASKHUB_MQTT__PORT": UNREACHABLE_MQTT_PORT,
            "TASKHUB_TOPIC_PREFIX": f"test-{run_id}/",
            "TASKHUB_MQTT__CLIENT_ID": f"test-{run_id}-bridge",
            "TASKHUB_STANDIN__PORT": str(standin_port),
            "TASKHUB_STANDIN__VENUE_PORT": str(venue_port),
            "TASKHUB_BRIDGE__SPOOL_DIR": tempfile.mkdtemp(prefix=f"taskhub-{run_id}-spool-"),
            "TASKHUB_STANDIN__LATENCY_MS": "1",
            "TASKHUB_HTTP__SHORTLINK_BASE_URL": f"http://127.0.0.1:{standin_port}/s",
            "TASKHUB_HTTP__VENUE_API_BASE_URL": f"http://127.0.0.1:{venue_port}/v2",
            # Probe servers off: many bridges and workers run at once. Tests of the probes
            # give their process a free port (`free_port()`).
            "TASKHUB_TELEMETRY__BRIDGE_PORT": "0",
            "TASKHUB_TELEMETRY__WORKER_PORT": "0",
        }
    )
    return run_id


def use_servers(run_id: str) -> int:
    """Claim this run's Redis database and point the settings at it and at the shared Mosquitto;
    returns the database number. Call before anything reads the settings."""
    db = claim_redis_db(run_id)
    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"
    os.environ.update({"TASKHUB_BROKER_URL": url, "TASKHUB_RESULT_BACKEND": url})
    chosen = os.environ.get(MQTT_PORT_CHOSEN, "")
    if chosen:
        os.environ["TASKHUB_MQTT__PORT"] = chosen
    else:
        os.environ.pop("TASKHUB_MQTT__PORT", None)
    return db
