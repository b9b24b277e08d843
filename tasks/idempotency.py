"""Exactly-once effects in Redis, whatever redelivers a task.

A task's Redis writes commit in one transaction with its done-marker, watched so that two copies
running at once cannot both commit. A copy that finds the marker (an MQTT redelivery, a spool
chunk drained twice, a Celery redelivery after a lost worker) does nothing and returns a small
answer saying so. Duplicates absorbed this way are counted per task.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import redis
from celery.exceptions import Reject
from redis.client import Pipeline

from taskhub import redis_keys
from taskhub.settings import get_settings
from tasks.ledger import settle_after_commit, settle_in_commit
from tasks.store import UNAVAILABLE, store_redis

Writes = Callable[[Pipeline], object]
"""Queues a task's effect on the transaction that marks it done."""
Plan = Callable[[Pipeline], tuple[dict[str, Any], Writes]]
"""Reads watched keys (the pipeline is still in immediate mode) and says the result and writes."""

DONE = 1
"""A done-marker's value: only its presence counts. The marker is kept for the whole idempotency
window, once per message, so it holds nothing else: not the result (the effect and the result
backend have that), not even a task id (48 bytes more each; docs/delivery.md, sizing)."""
MARKER_MAX_BYTES = 96
"""Most bytes a check-in's done-marker takes in Redis (`MEMORY USAGE`: key, value, overhead)."""
MAX_COMMIT_ATTEMPTS = 20
"""How often a planned commit decides again when its watched keys change under it; past this
the task goes back to its queue. Each attempt loses only to a commit that got through."""


class CommitContended(redis.RedisError):
    """Other commits kept changing the keys a planned commit depends on."""


def done_key(identity: str) -> str:
    return redis_keys.done(get_settings().key_prefix, identity)


def duplicates_key() -> str:
    return redis_keys.duplicates_absorbed(get_settings().key_prefix)


def is_done(identity: str) -> bool:
    """Whether a copy already committed `identity`."""
    return bool(store_redis().exists(done_key(identity)))


def duplicate(identity: str) -> dict[str, Any]:
    """What an absorbed duplicate returns: which message it repeats. The first copy's effect is
    in the effect store, under the task's own key."""
    return {"duplicate": True, "identity": identity}


def absorb_duplicate(task_name: str, task_id: str, identity: str) -> dict[str, Any]:
    """Count a duplicate, settle its ledger entry, and say what it duplicates."""
    with store_redis().pipeline() as pipe:
        pipe.hincrby(duplicates_key(), task_name, 1)
        settle_in_commit(pipe, task_id)
        pipe.execute()
    settle_after_commit(task_id)
    return duplicate(identity)


def commit_once(identity: str, writes: Writes, task_id: str | None = None) -> bool:
    """Apply `writes` and mark `identity` done, atomically, then settle `task_id` in the ledger
    (in the same transaction when the ledger shares the effect store's Redis); False if another copy
    committed first.
    """
    return commit_planned(identity, lambda _pipe: ({}, writes), (), task_id) is not None


def commit_planned(
    identity: str, plan: Plan, watch: Sequence[str] = (), task_id: str | None = None
) -> dict[str, Any] | None:
    """Like commit_once, for effects that depend on what `watch` holds: `plan` reads those keys
    and decides, and a change to them before the commit makes it decide again. The result that
    committed, or None if another copy of `identity` did first.
    """
    key = done_key(identity)
    window = int(get_settings().tasks.idempotency_window)
    for _ in range(MAX_COMMIT_ATTEMPTS):
        with store_redis().pipeline() as pipe:
            try:
                pipe.watch(key, *watch)
                if pipe.exists(key):
                    return None
                result, writes = plan(pipe)
                pipe.multi()
                writes(pipe)
                pipe.set(key, DONE, ex=window)
                if task_id:
                    settle_in_commit(pipe, task_id)
                pipe.execute()
                break
            except redis.WatchError:
                if store_redis().exists(key):
                    return None
                if not watch:
                    # redis-py also says WatchError when the connection dropped mid-commit (a
                    # Redis restart): then nothing committed, and the task must be given back,
                    # not taken for a duplicate whose marker is missing (scripts/chaos lost a
                    # check-in so).
                    raise redis.ConnectionError(f"lost Redis while committing {identity}") from None
                # A watched key moved (or the connection dropped: the next WATCH finds out).
    else:
        raise CommitContended(f"{identity}: {', '.join(watch)} kept changing while it committed")
    if task_id:
        settle_after_commit(task_id)
    return result


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


def run_once_planned(
    task_name: str, task_id: str, identity: str, plan: Plan, watch: Sequence[str]
) -> dict[str, Any]:
    """run_once for an effect decided by what `watch` holds, read and written in one transaction
    (a sensor's latest reading moves only forward). `plan` runs inside the WATCH: Redis reads
    only, no slow calls.
    """
    try:
        if is_done(identity):
            return absorb_duplicate(task_name, task_id, identity)
        result = commit_planned(identity, plan, watch, task_id)
        if result is None:
            return absorb_duplicate(task_name, task_id, identity)
    except (*UNAVAILABLE, CommitContended) as error:
        raise Reject(error, requeue=True) from error
    return result
