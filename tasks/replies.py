"""What a worker replies to an MQTT 5 request (docs/requests.md): the worker half of the contract
in taskhub/replies.py.

A task whose message carries a reply address (the `taskhub_reply` header) replies once it is done:
OK with its result when its effect commits, FAILED with an error document when it fails for good.
Retries and deferrals do not reply. A reply is an entry in the outbox stream, beside the ledger in
the broker's Redis, which a bridge publishes; tasks/idempotency.py adds the OK reply in the
effect's own transaction when the effect store is that Redis (and just after it otherwise), so a
reply exists if and only if the effect committed. A task that does not commit
through tasks/idempotency.py replies from the `task_success` signal instead, after it returned.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import redis
from celery import Task, current_task
from celery.signals import task_success
from redis.client import Pipeline

from taskhub import redis_keys, replies, tracing
from taskhub.replies import REPLY_HEADER, Reply, ReplyAddress, ReplyStatus, error_document
from taskhub.settings import get_settings
from tasks.ledger import ledger_in_store, ledger_redis

log = logging.getLogger("taskhub.worker")

STORED_RESULT_MAX_BYTES = 64 * 1024
"""Largest result a request's done-marker keeps for its duplicates' replies: the marker lives the
whole idempotency window. A larger result is not kept, and a duplicate replies with the
duplicate answer instead (as for a first copy that was no request)."""
REPLIED = "taskhub_replied"
"""Set on a task's request once its reply is queued, so the `task_success` fallback adds none."""
RESULT_NOT_JSON = "result_not_json"
"""Error reason of a FAILED reply whose task succeeded with a result JSON cannot hold."""


def reply_address(request: Any) -> ReplyAddress | None:
    """The reply address a task's request carries, or None. Celery 5.7 puts headers it does not
    know in `request.headers` (and keeps them on retries); as attributes too."""
    headers = getattr(request, "headers", None)
    value = headers.get(REPLY_HEADER) if isinstance(headers, Mapping) else None
    if value is None:
        value = getattr(request, REPLY_HEADER, None)
    return ReplyAddress.from_header(value)


def running_request(task_id: str) -> Any:
    """The request of the task this thread (or greenlet) runs, if it is `task_id`; else None (code
    called outside a worker, or by another task's id)."""
    if not current_task:  # a proxy: false when no task runs here
        return None
    request = current_task.request
    return request if request.id == task_id else None


def running_reply_address(task_id: str) -> ReplyAddress | None:
    """Where the running task `task_id` replies, if its message asked for a reply."""
    request = running_request(task_id)
    return None if request is None else reply_address(request)


def mark_replied(task_id: str) -> None:
    request = running_request(task_id)
    if request is not None:
        setattr(request, REPLIED, True)


def result_json(result: Any) -> bytes:
    """A result as a reply's payload; TypeError or ValueError if JSON cannot hold it."""
    return json.dumps(result, separators=(",", ":"), allow_nan=False).encode()


def outbox_key() -> str:
    return redis_keys.reply_outbox(get_settings().key_prefix)


def add_reply(pipe: Pipeline, reply: Reply) -> None:
    """Queue `reply` on `pipe`, a transaction on the outbox's Redis."""
    maxlen = get_settings().replies.outbox_maxlen
    replies.add_reply(pipe, outbox_key(), reply.entry(), maxlen)


def reply_in_commit(pipe: Pipeline, reply: Reply) -> None:
    """Queue `reply` on `pipe`, a transaction on the effect store, if the outbox is there too.

    The outbox lives beside the ledger and the dead letters, in the broker's Redis, where the
    bridges read it; `reply_after_commit` covers a separate effect store."""
    if ledger_in_store():
        add_reply(pipe, reply)


def reply_after_commit(reply: Reply) -> None:
    """Add `reply` to the broker's Redis once the effect store committed, if they are two Redis.
    A crash between the two leaves the task unacked: its redelivery is absorbed as a duplicate,
    which replies with the result the marker kept."""
    if not ledger_in_store():
        reply_now(reply)


def reply_now(reply: Reply) -> None:
    with ledger_redis().pipeline() as pipe:
        add_reply(pipe, reply)
        pipe.execute()


def ok(address: ReplyAddress, payload: bytes) -> Reply:
    """An OK reply, carrying the running task's trace context while tracing is on."""
    return Reply(address, ReplyStatus.OK, payload, tracing.reply_properties())


def failed(address: ReplyAddress, reason: str, detail: str, task_id: str | None) -> Reply:
    document = error_document(reason, detail, task_id)
    return Reply(address, ReplyStatus.FAILED, document, tracing.reply_properties())


def reply_failed(task: Task, task_id: str, reason: str, detail: str) -> None:
    """Reply FAILED to the request of `task`, which failed for good, if it was one. A Redis
    error is logged, not raised: the task's failure is recorded elsewhere all the same."""
    address = reply_address(task.request)
    if address is None:
        return
    try:
        reply_now(failed(address, reason, detail, task_id))
    except redis.RedisError as error:
        log.error("task %s failed and its reply could not be queued: %s", task_id, error)


@task_success.connect
def reply_after_success(sender: Task | None = None, result: Any = None, **_: Any) -> None:
    """Reply OK for a task that returned without replying through tasks/idempotency.py: after
    the fact, so a crash between its effect and this reply leaves its requester waiting."""
    if sender is None:
        return
    request = sender.request
    if getattr(request, REPLIED, False):
        return
    address = reply_address(request)
    if address is None:
        return
    task_id = str(request.id)
    try:
        reply = ok(address, result_json(result))
    except (TypeError, ValueError) as error:
        reply = failed(address, RESULT_NOT_JSON, f"{type(error).__name__}: {error}", task_id)
    try:
        reply_now(reply)
    except redis.RedisError as error:
        log.error("task %s succeeded and its reply could not be queued: %s", task_id, error)
