"""Exactly-once effects in Redis, whatever redelivers a task.

A task's Redis writes commit in one transaction with its done-marker, watched so that two copies
running at once cannot both commit. A copy that finds the marker (an MQTT redelivery, a spool
replay, a Celery redelivery after a lost worker) does nothing and returns the first result.
Duplicates absorbed this way are counted per task.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import redis
from celery.exceptions import Reject
from redis.client import Pipeline

from taskhub.settings import get_settings
from tasks.ledger import settle_after_commit, settle_in_commit
from tasks.store import store_redis

Writes = Callable[[Pipeline], object]
"""Queues a task's effect on the transaction that marks it done."""
Plan = Callable[[Pipeline], tuple[dict[str, Any], Writes]]
"""Reads watched keys (the pipeline is still in immediate mode) and says the result and writes."""

MAX_COMMIT_ATTEMPTS = 20
"""How often a planned commit decides again when its watched keys change under it; past this
the task goes back to its queue. Each attempt loses only to a commit that got through."""


class CommitContended(redis.RedisError):
    """Other commits kept changing the keys a planned commit depends on."""


def done_key(identity: str) -> str:
    return f"{get_settings().key_prefix}:done:{identity}"


def duplicates_key() -> str:
    return f"{get_settings().key_prefix}:stats:duplicates_absorbed"


def previous_result(identity: str) -> dict[str, Any] | None:
    """The result of the copy that already committed `identity`, if any did."""
    raw = store_redis().get(done_key(identity))
    return None if raw is None else dict(json.loads(raw))


def absorb_duplicate(task_name: str, task_id: str, identity: str) -> dict[str, Any]:
    """Count a duplicate, settle its ledger entry, and return the result it duplicates."""
    with store_redis().pipeline() as pipe:
        pipe.hincrby(duplicates_key(), task_name, 1)
        settle_in_commit(pipe, task_id)
        pipe.execute()
    settle_after_commit(task_id)
    result = previous_result(identity)
    if result is None:  # the marker expired between our two reads: the window was too short
        raise RuntimeError(
            f"done-marker for {identity} vanished; TASKHUB_TASKS__IDEMPOTENCY_WINDOW"
        )
    return result


def commit_once(
    identity: str, result: dict[str, Any], writes: Writes, task_id: str | None = None
) -> bool:
    """Apply `writes` and mark `identity` done, atomically, then settle `task_id` in the ledger
    (in the same transaction when the ledger shares the store's Redis); False if another copy
    committed first.
    """
    return commit_planned(identity, lambda _pipe: (result, writes), (), task_id) is not None


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
                pipe.set(key, json.dumps(result), ex=window)
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

    If Redis itself is unreachable, the task is rejected back to its queue rather than failed:
    Celery acks a failed task, which would lose it.
    """
    try:
        if previous_result(identity) is not None:
            return absorb_duplicate(task_name, task_id, identity)
        result, writes = compute()
        if not commit_once(identity, result, writes, task_id):
            return absorb_duplicate(task_name, task_id, identity)
    except (redis.ConnectionError, redis.TimeoutError) as error:
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
        if previous_result(identity) is not None:
            return absorb_duplicate(task_name, task_id, identity)
        result = commit_planned(identity, plan, watch, task_id)
        if result is None:
            return absorb_duplicate(task_name, task_id, identity)
    except (redis.ConnectionError, redis.TimeoutError, CommitContended) as error:
        raise Reject(error, requeue=True) from error
    return result
