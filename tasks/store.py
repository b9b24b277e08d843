"""The effect store: the Redis (TASKHUB_STORE_URL, else the broker's) where tasks keep their effects
as JSON documents, with their done-markers and the caches, breakers and rate limits workers share.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import redis
from redis.client import Pipeline

from taskhub import redis_keys
from taskhub.settings import get_settings
from taskhub.worker import shape

UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.OutOfMemoryError)
"""Redis cannot take a task's writes now: unreachable, or at maxmemory. The task goes back to its
queue rather than failing, since Celery acks a failed task."""

POOL_WAIT_SECONDS = 10.0
"""How long a task waits for a free Redis connection before it fails (and is requeued)."""


@functools.cache
def _redis_for(pid: int) -> redis.Redis:
    # A blocking pool sized for the worker's concurrency: past it a task waits for a connection
    # rather than failing with MaxConnectionsError, as hundreds of greenlets otherwise would.
    pool = redis.BlockingConnectionPool.from_url(
        get_settings().store_redis_url,
        max_connections=shape().connections,
        timeout=POOL_WAIT_SECONDS,
    )
    return redis.Redis(connection_pool=pool)


def store_redis() -> redis.Redis:
    """This process's Redis client for effects (pool children each get their own)."""
    return _redis_for(os.getpid())


def effect_key(kind: str, identity: str) -> str:
    return redis_keys.effect(get_settings().key_prefix, kind, identity)


def save_effect(pipe: Pipeline, kind: str, identity: str, document: dict[str, Any]) -> None:
    """Queue the write of `document` on `pipe`, to commit with the task's done-marker."""
    ttl = int(get_settings().tasks.result_ttl)
    pipe.set(effect_key(kind, identity), json.dumps(document), ex=ttl)
