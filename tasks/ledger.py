"""Settling the bridge's ledger from the worker side, so the sweeper leaves finished tasks alone.

A task is settled when its effect commits (in that same transaction, see tasks/idempotency.py),
when a duplicate of it is absorbed, and when it fails for good. A retry refreshes its entry: the
retry travels as a new message the ledger does not know, and must not look lost meanwhile.
"""

from __future__ import annotations

import time
from typing import Any

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


@task_failure.connect
def _settle_failed(task_id: str | None = None, **_: Any) -> None:
    if task_id:
        settle_now(task_id)


@task_retry.connect
def _refresh_retrying(request: Any = None, **_: Any) -> None:
    task_id = getattr(request, "id", None)
    if task_id:
        store_redis().zadd(ledger_keys().index, {task_id: time.time()}, xx=True)
