"""The worker-loss cap: a task whose runs keep killing the worker running them is dead-lettered as
`worker_lost` at its next delivery, instead of being given back forever.

`task_reject_on_worker_lost` requeues the task of a prefork child that died, and a whole worker's
unacked tasks come back after the visibility timeout: right for a worker killed by chance, an
endless loop for a task that kills whatever runs it (a segfault, the OOM killer). So every start
is counted in Redis before the task's body runs, per task id and retry, and the count is cleared
when the run ends in any way its worker saw; a count left standing is a run that took its worker
with it. A start that finds more than `TASKHUB_TASKS__MAX_WORKER_LOSSES` of them dead-letters the
task, settles its ledger entry and acks it, without running it.

A gevent worker that dies takes every task it was running, and they all come back together, with
the culprit among them: counted alone they would all reach the cap with it (scripts/chaos
dead-lettered 2-6 innocent check-ins so). So a task that comes back after a loss first waits its
own share of `TASKHUB_TASKS__WORKER_LOSS_SPREAD`, and the tasks that kept the culprit company
scatter before it strikes again.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import redis
from celery import Task
from celery.exceptions import Reject

from taskhub import redis_keys
from taskhub.deadletters import DeadLetter, FailedTask, Reason, deadletter_stream
from taskhub.deferral import defer
from taskhub.ledger import LedgerKeys, settle
from taskhub.settings import get_settings
from taskhub.telemetry.deadletter_log import log_dead_letter
from taskhub.worker import broker_redis

log = logging.getLogger("taskhub.worker")

LOSS_MEMORY_SECONDS = 86_400
"""A task's count is kept this long after its last start (at least twice the visibility timeout,
which bounds how soon a lost worker's task comes back). One that comes back later starts counting
again: that errs toward running it, never toward losing it."""
CLEAR_PATIENCE_SECONDS = 6.0
"""How long the end of a run keeps trying to clear its count while Redis is away."""
CLEAR_FIRST_WAIT_SECONDS = 0.2
LETTERED = "lettered"
"""What a task's count becomes once it is dead-lettered: a later copy of it (a sweep and a
restore can both bring one back) is dropped unrun, with no second letter; a replay clears it."""
REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.OutOfMemoryError)
"""Redis cannot count a start now (unreachable, or at maxmemory): the task goes back unrun."""


SPREAD_HEADER = "taskhub_spread_after_losses"
"""On a task put off after a loss: how many losses it was put off for (it runs when it comes)."""


def spread_delay(task_id: str, losses: int, window: float) -> float:
    """How long a task waits after its `losses`-th loss: its own share of `window`, different
    for each task and each loss, so tasks lost together come back apart, and a task that kept
    company with one that kills its worker is unlikely to do so again."""
    digest = hashlib.sha256(f"{task_id}:{losses}".encode()).digest()
    return window * int.from_bytes(digest[:4], "big") / 2**32


def _spread_after(request: Any) -> int:
    headers = request.headers or {}
    value = headers.get(SPREAD_HEADER) or getattr(request, SPREAD_HEADER, None)
    return int(value or 0)


class WorkerLostTooOften(Exception):
    """Why a task was rejected without running: its earlier runs killed their worker. Carried in
    Celery's `Reject`, so the task shows as FAILURE with this reason."""


@contextmanager
def counted_run(task: Task, args: Any, kwargs: Any) -> Iterator[None]:
    """Count this start of `task`, run the body inside the block, and clear the count at its end.

    A start past the cap writes the task's `worker_lost` letter and raises `Reject` (no requeue),
    which acks it. Without Redis the start cannot be counted: the task is given back unrun.
    """
    settings = get_settings()
    request = task.request
    # One count per delivery chain: a retry is a new run with its own count, so a task that
    # fails and retries is never mistaken for one that kills its worker.
    key = redis_keys.worker_losses(settings.key_prefix, str(request.id), int(request.retries or 0))
    memory = _memory_seconds()
    client = broker_redis()
    try:
        with client.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, memory)
            try:
                starts, _ = pipe.execute()
            except redis.ResponseError:
                if not _lettered(client, key):  # e.g. at maxmemory: handled below, not a copy
                    raise
                _drop_lettered_copy(client, task)  # INCR on LETTERED: a copy was refused already
        losses = int(starts) - 1  # the earlier starts that never ended
        refused = losses >= settings.tasks.max_worker_losses
        if refused:
            _dead_letter(client, task, key, losses, args, kwargs)
        spread = (
            not refused
            and losses > 0
            and _spread_after(request) < losses
            and settings.tasks.worker_loss_spread > 0
        )
        if spread:
            client.decr(key)  # this start puts the run off; it is not one
    except REDIS_ERRORS as error:
        raise Reject(error, requeue=True) from error
    if refused:
        raise Reject(WorkerLostTooOften(_detail(losses)), requeue=False)
    if spread:
        delay = spread_delay(str(request.id), losses, settings.tasks.worker_loss_spread)
        defer(task, delay, "spread after a worker loss", {SPREAD_HEADER: losses})
    try:
        yield
    finally:
        _clear(client, key, str(request.id))


def _clear(client: redis.Redis, key: str, task_id: str) -> None:
    """Clear a run's count, waiting out a short Redis outage: a count left standing is taken for
    a lost worker at the next start (scripts/chaos: a Redis restart made one task's run look lost,
    and the task was dead-lettered)."""
    deadline = time.monotonic() + CLEAR_PATIENCE_SECONDS
    wait = CLEAR_FIRST_WAIT_SECONDS
    while True:
        try:
            client.delete(key)
            return
        except REDIS_ERRORS as error:
            if time.monotonic() + wait > deadline:  # counted as a loss at most; the key expires
                log.warning("task %s: worker-loss count not cleared: %s", task_id, error)
                return
        time.sleep(wait)  # gevent's sleep in a gevent worker: other tasks run meanwhile
        wait *= 2


def _memory_seconds() -> int:
    return max(LOSS_MEMORY_SECONDS, int(2 * get_settings().tasks.visibility_timeout))


def _detail(losses: int) -> str:
    return f"its worker was lost {losses} times while running it (a pool child or worker died)"


def _dead_letter(
    client: redis.Redis, task: Task, key: str, losses: int, args: Any, kwargs: Any
) -> None:
    """The letter, the ledger entry settled and the count removed, in one transaction: a replay
    of the letter keeps the task id, and must start with no losses."""
    settings = get_settings()
    request = task.request
    queue = str((request.delivery_info or {}).get("routing_key") or "")
    letter = DeadLetter(
        Reason.WORKER_LOST,
        _detail(losses),
        route=queue or None,
        task=FailedTask(
            name=task.name,
            task_id=str(request.id),
            queue=queue,
            args=list(args or ()),
            kwargs=dict(kwargs or {}),
            exception=f"{__name__}.{WorkerLostTooOften.__qualname__}",
            retries=int(request.retries or 0),
        ),
    )
    with client.pipeline(transaction=True) as pipe:
        deadletter_stream().add_to(pipe, letter)
        settle(pipe, LedgerKeys.for_prefix(settings.key_prefix), str(request.id))
        pipe.set(
            key, LETTERED, ex=max(LOSS_MEMORY_SECONDS, int(2 * settings.tasks.visibility_timeout))
        )
        pipe.execute()
    log_dead_letter(letter)


def _lettered(client: redis.Redis, key: str) -> bool:
    """Whether a refused INCR met a dead-lettered task's mark, rather than a Redis at maxmemory
    (its refusal is a ResponseError too): taking the second for the first dropped a task unrun
    when memory came back between the INCR and the drop (tests/test_redis_full.py caught it)."""
    return client.get(key) in (LETTERED, LETTERED.encode())


def _drop_lettered_copy(client: redis.Redis, task: Task) -> NoReturn:
    """Another copy of a task already dead-lettered as worker_lost (a sweep and a restore can
    both bring one back): settle it and ack it unrun, with no second letter."""
    settings = get_settings()
    with client.pipeline(transaction=True) as pipe:
        settle(pipe, LedgerKeys.for_prefix(settings.key_prefix), str(task.request.id))
        pipe.execute()
    log.warning("task %s[%s]: a copy of a worker_lost task, dropped", task.name, task.request.id)
    raise Reject(WorkerLostTooOften("another copy was dead-lettered as worker_lost"), requeue=False)
