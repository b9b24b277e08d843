"""Settling the bridge's ledger from the worker side, so the sweeper leaves finished tasks alone.

A task is settled when its effect commits (in that same transaction, see tasks/idempotency.py),
when a duplicate of it is absorbed, and when it fails for good. A retry refreshes its entry: the
retry travels as a new message the ledger does not know, and must not look lost meanwhile.
"""

from __future__ import annotations

import time
from typing import Any

import redis
from celery.signals import task_failure, task_retry

from taskhub.ledger import LedgerKeys, settle
from taskhub.settings import get_settings
from tasks.store import store_redis


def ledger_keys() -> LedgerKeys:
    return LedgerKeys.for_prefix(get_settings().key_prefix)


def settle_now(task_id: str) -> None:
    with store_redis().pipeline() as pipe:
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
        store_redis().zadd(ledger_keys().index, {task_id: time.time()}, xx=True)
