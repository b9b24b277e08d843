"""Exactly-once effects in Redis, whatever redelivers a task.

A task's Redis writes commit in one transaction with its done-marker, watched so that two copies
running at once cannot both commit. A copy that finds the marker (an MQTT redelivery, a spool
replay, a Celery redelivery after a lost worker) does nothing and returns a small answer
saying so. Duplicates absorbed this way are counted per task.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis
from celery.exceptions import Reject
from redis.client import Pipeline

from taskhub.ledger import settle
from taskhub.settings import get_settings
from tasks.ledger import ledger_keys
from tasks.store import UNAVAILABLE, store_redis

Writes = Callable[[Pipeline], object]

DONE = 1
"""A done-marker's value: only its presence counts. The marker is kept for the whole idempotency
window, once per message, so it holds nothing else: not the result (the effect and the result
backend have that), not even a task id (48 bytes more each; docs/delivery.md, sizing)."""
MARKER_MAX_BYTES = 96
"""Most bytes a check-in's done-marker takes in Redis (`MEMORY USAGE`: key, value, overhead)."""


def done_key(identity: str) -> str:
    return f"{get_settings().key_prefix}:done:{identity}"


def duplicates_key() -> str:
    return f"{get_settings().key_prefix}:stats:duplicates_absorbed"


def is_done(identity: str) -> bool:
    """Whether a copy already committed `identity`."""
    return bool(store_redis().exists(done_key(identity)))


def duplicate(identity: str) -> dict[str, Any]:
    """What an absorbed duplicate returns: which message it repeats. The first copy's effect is
    in the store, under the task's own key."""
    return {"duplicate": True, "identity": identity}


def absorb_duplicate(task_name: str, task_id: str, identity: str) -> dict[str, Any]:
    """Count a duplicate, settle its ledger entry, and say what it duplicates."""
    with store_redis().pipeline() as pipe:
        pipe.hincrby(duplicates_key(), task_name, 1)
        settle(pipe, ledger_keys(), task_id)
        pipe.execute()
    return duplicate(identity)


def commit_once(identity: str, writes: Writes, task_id: str | None = None) -> bool:
    """Apply `writes`, mark `identity` done and settle `task_id` in the ledger, atomically;
    False if another copy did first.
    """
    key = done_key(identity)
    window = int(get_settings().tasks.idempotency_window)
    with store_redis().pipeline() as pipe:
        try:
            pipe.watch(key)
            if pipe.exists(key):
                return False
            pipe.multi()
            writes(pipe)
            pipe.set(key, DONE, ex=window)
            if task_id:
                settle(pipe, ledger_keys(), task_id)
            pipe.execute()
        except redis.WatchError:
            # redis-py also says WatchError when the connection dropped mid-commit (a Redis
            # restart): then nothing committed, and the task must be given back, not taken for a
            # duplicate whose marker is missing (scripts/chaos lost a check-in so).
            if not store_redis().exists(key):
                raise redis.ConnectionError(f"lost Redis while committing {identity}") from None
            return False
    return True


def run_once(
    task_name: str,
    task_id: str,
    identity: str,
    compute: Callable[[], tuple[dict[str, Any], Writes]],
) -> dict[str, Any]:
    """Compute a result and commit its writes unless `identity` is already done.

    If Redis is unreachable or at maxmemory, the task is rejected back to its queue rather than
    failed: Celery acks a failed task, which would lose it.
    """
    try:
        if is_done(identity):
            return absorb_duplicate(task_name, task_id, identity)
        result, writes = compute()
        if not commit_once(identity, writes, task_id):
            return absorb_duplicate(task_name, task_id, identity)
    except UNAVAILABLE as error:
        raise Reject(error, requeue=True) from error
    return result
