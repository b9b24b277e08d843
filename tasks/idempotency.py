"""Exactly-once effects in Redis, whatever redelivers a task.

A task's Redis writes commit in one transaction with its done-marker, watched so that two copies
running at once cannot both commit. A copy that finds the marker (an MQTT redelivery, a spool
chunk drained twice, a Celery redelivery after a lost worker) does nothing and returns a small
answer saying so. Duplicates absorbed this way are counted per task.

A task that answers an MQTT 5 request (tasks/replies.py) adds its OK reply to the outbox in the
same transaction, and its marker keeps the result, so that a duplicate replies with it again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import redis
from celery.exceptions import Reject
from redis.client import Pipeline

from taskhub import redis_keys
from taskhub.replies import Reply, ReplyAddress
from taskhub.settings import get_settings
from tasks import replies
from tasks.ledger import settle_after_commit, settle_in_commit
from tasks.store import UNAVAILABLE, store_redis

Writes = Callable[[Pipeline], object]
"""Queues a task's effect on the transaction that marks it done."""
Plan = Callable[[Pipeline], tuple[dict[str, Any], Writes]]
"""Reads watched keys (the pipeline is still in immediate mode) and says the result and writes."""

DONE = 1
"""A done-marker's value: only its presence counts. The marker is kept for the whole idempotency
window, once per message, so it holds nothing else: not the result (the effect and the result
backend have that), not even a task id (48 bytes more each; docs/delivery.md, sizing).

The one exception is a request's marker (docs/requests.md): it holds the result as JSON, always an
object, so that a duplicate can reply with it; a requester pays for its own answer's keeping."""
MARKER_MAX_BYTES = 96
"""Most bytes a check-in's done-marker takes in Redis (`MEMORY USAGE`: key, value, overhead), when
it is no request's."""
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


def done_marker(identity: str) -> bytes | None:
    """The value of `identity`'s done-marker (see DONE), or None if no copy committed it."""
    value = store_redis().get(done_key(identity))
    return value.encode() if isinstance(value, str) else value


def stored_result(marker: bytes | None) -> bytes | None:
    """The result JSON a request's done-marker holds; None for a plain marker."""
    return marker if marker is not None and marker.startswith(b"{") else None


def duplicate(identity: str) -> dict[str, Any]:
    """What an absorbed duplicate returns: which message it repeats. The first copy's effect is
    in the effect store, under the task's own key."""
    return {"duplicate": True, "identity": identity}


def absorb_duplicate(
    task_name: str, task_id: str, identity: str, marker: bytes | None = None
) -> dict[str, Any]:
    """Count a duplicate, settle its ledger entry, and say what it duplicates. A duplicate of a
    request replies OK again: with the result `marker` keeps, else with the duplicate answer."""
    answer = duplicate(identity)
    address = replies.running_reply_address(task_id)
    with store_redis().pipeline() as pipe:
        pipe.hincrby(duplicates_key(), task_name, 1)
        settle_in_commit(pipe, task_id)
        if address is not None:
            payload = stored_result(marker) or replies.result_json(answer)
            reply = replies.ok(address, payload)
            replies.reply_in_commit(pipe, reply)
        pipe.execute()
    if address is not None:
        replies.reply_after_commit(reply)
        replies.mark_replied(task_id)
    settle_after_commit(task_id)
    return answer


def commit_once(identity: str, writes: Writes, task_id: str | None = None) -> bool:
    """Apply `writes` and mark `identity` done, atomically, then settle `task_id` in the ledger
    (in the same transaction when the ledger shares the effect store's Redis); False if another copy
    committed first.
    """
    return commit_planned(identity, lambda _pipe: ({}, writes), (), task_id) is not None


def commit_planned(
    identity: str,
    plan: Plan,
    watch: Sequence[str] = (),
    task_id: str | None = None,
    reply: ReplyAddress | None = None,
) -> dict[str, Any] | None:
    """Like commit_once, for effects that depend on what `watch` holds: `plan` reads those keys
    and decides, and a change to them before the commit makes it decide again. The result that
    committed, or None if another copy of `identity` did first.

    With a `reply` address, the OK reply (the result as JSON) is added to the outbox in the same
    transaction, and the marker keeps the result for duplicates.
    """
    key = done_key(identity)
    window = int(get_settings().tasks.idempotency_window)
    answer: Reply | None = None
    for _ in range(MAX_COMMIT_ATTEMPTS):
        with store_redis().pipeline() as pipe:
            try:
                pipe.watch(key, *watch)
                if pipe.exists(key):
                    return None
                result, writes = plan(pipe)
                answer = None if reply is None else replies.ok(reply, replies.result_json(result))
                pipe.multi()
                writes(pipe)
                pipe.set(key, _marker(answer), ex=window)
                if answer is not None:
                    replies.reply_in_commit(pipe, answer)
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
    _after_commit(task_id, answer)
    return result


def _after_commit(task_id: str | None, answer: Reply | None) -> None:
    """What follows a commit outside its transaction when the effect store is not the broker's
    Redis: the reply and the ledger (tasks/ledger.py says why that order is safe)."""
    if answer is not None:
        replies.reply_after_commit(answer)
        if task_id:
            replies.mark_replied(task_id)
    if task_id:
        settle_after_commit(task_id)


def _marker(reply: Reply | None) -> bytes | int:
    """A done-marker's value: the result a request replied with, if it is small enough to keep."""
    if reply is None or len(reply.payload) > replies.STORED_RESULT_MAX_BYTES:
        return DONE
    return reply.payload


def run_once(
    task_name: str,
    task_id: str,
    identity: str,
    compute: Callable[[], tuple[dict[str, Any], Writes]],
) -> dict[str, Any]:
    """Compute a result and commit its writes unless `identity` is already done; reply to the
    running task's request, if it is one, in the same transaction (tasks/replies.py).

    If Redis is unreachable or at maxmemory, the task is rejected back to its queue rather than
    failed: Celery acks a failed task, which would lose it.
    """
    try:
        marker = done_marker(identity)
        if marker is not None:
            return absorb_duplicate(task_name, task_id, identity, marker)
        result, writes = compute()
        committed = commit_planned(
            identity,
            lambda _pipe: (result, writes),
            (),
            task_id,
            replies.running_reply_address(task_id),
        )
        if committed is None:
            return absorb_duplicate(task_name, task_id, identity, done_marker(identity))
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
        marker = done_marker(identity)
        if marker is not None:
            return absorb_duplicate(task_name, task_id, identity, marker)
        result = commit_planned(
            identity, plan, watch, task_id, replies.running_reply_address(task_id)
        )
        if result is None:
            return absorb_duplicate(task_name, task_id, identity, done_marker(identity))
    except (*UNAVAILABLE, CommitContended) as error:
        raise Reject(error, requeue=True) from error
    return result
