"""Settling the bridge's ledger from the worker side, so the sweeper leaves finished tasks alone.

A task is settled when its effect commits (see tasks/idempotency.py), when a duplicate of it is
absorbed, and when it fails for good. A retry refreshes its entry: the retry travels as a new
message the ledger does not know, and must not look lost meanwhile.

The ledger lives in the broker's Redis, beside the queues it watches, whatever
`TASKHUB_STORE_URL` says. When the effect store is that same Redis, a commit settles its entry in
its own transaction; when it is another, the entry is settled just after the effect commits, and a
crash between the two leaves an entry whose done-marker exists: its next delivery (a restore or a
sweep) is absorbed as a duplicate, which settles it without running the effect again.
"""

from __future__ import annotations

import time
from typing import Any

import redis
from celery.signals import task_failure, task_retry
from redis.client import Pipeline

from taskhub.ledger import LedgerKeys, settle
from taskhub.settings import get_settings
from taskhub.worker import broker_redis
from tasks.store import store_redis


def ledger_keys() -> LedgerKeys:
    return LedgerKeys.for_prefix(get_settings().key_prefix)


def ledger_in_store() -> bool:
    """True when the effect store is the broker's Redis, so one transaction can commit and settle.

    URLs are compared as written: the same Redis spelled two ways is taken for two, which costs
    atomicity, never correctness."""
    settings = get_settings()
    return settings.store_redis_url == settings.broker_url.get_secret_value()


def ledger_redis() -> redis.Redis:
    """This process's client for the ledger: the broker's Redis (pool children get their own)."""
    return store_redis() if ledger_in_store() else broker_redis()


def settle_in_commit(pipe: Pipeline, task_id: str) -> None:
    """Queue the settling of `task_id` on `pipe`, a transaction on the effect store, if the ledger
    is there too; `settle_after_commit` covers the other case."""
    if ledger_in_store():
        settle(pipe, ledger_keys(), task_id)


def settle_after_commit(task_id: str) -> None:
    """Settle `task_id` in the broker's Redis once the effect store committed, if they are two
    Redis. Effect first: a crash between leaves a redelivery to absorb, never an effect unmade."""
    if not ledger_in_store():
        settle_now(task_id)


def settle_now(task_id: str) -> None:
    with ledger_redis().pipeline() as pipe:
        settle(pipe, ledger_keys(), task_id)
        pipe.execute()


INFRASTRUCTURE_ERRORS = (redis.ConnectionError, redis.TimeoutError)
"""Failures that say Redis was unreachable, not that the task is wrong. Celery acks such a
failed task (for one, when it cannot record the task as started), so its ledger entry must stay:
the sweeper then enqueues it again."""


@task_failure.connect
def settle_failed(
    task_id: str | None = None, exception: BaseException | None = None, **_: Any
) -> None:
    """Settle a task that failed for good; leave one that failed because Redis was away."""
    if task_id and not isinstance(exception, INFRASTRUCTURE_ERRORS):
        settle_now(task_id)


@task_retry.connect
def _refresh_retrying(request: Any = None, **_: Any) -> None:
    task_id = getattr(request, "id", None)
    if task_id:
        ledger_redis().zadd(ledger_keys().index, {task_id: time.time()}, xx=True)
