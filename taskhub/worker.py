"""What the worker this process serves looks like (pool kind, concurrency), and what a gevent
worker needs that Celery does not give it: pools sized for its concurrency, greenlet-safe signals.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis
from celery import platforms
from celery.signals import worker_init

from taskhub.routes import WorkerPool
from taskhub.settings import get_settings

log = logging.getLogger("taskhub.worker")

CONNECTION_MARGIN = 16
"""Connections beyond one per task: the consumer, the autoscaler, events and the ledger."""
LENDING_FACTOR = 2
"""At most as many tasks again as the pool has slots may run while others lend theirs, so a
process may hold twice its concurrency in running tasks, each needing a connection."""
EX_HARD_SHUTDOWN = 1


@dataclass(frozen=True, slots=True)
class WorkerShape:
    """How many tasks this process may run at once, and in which kind of pool."""

    pool: WorkerPool | None
    """None outside a worker (a program calling `task.delay()`, a test)."""
    concurrency: int

    @property
    def connections(self) -> int:
        """How many Redis or HTTP connections this process may need at once: a pool that runs
        out raises (kombu's) or makes tasks wait, so it is sized for every task it can run."""
        return self.concurrency * LENDING_FACTOR + CONNECTION_MARGIN


_shape = WorkerShape(pool=None, concurrency=1)
_slot_lender: Callable[[], Any] | None = None


def shape() -> WorkerShape:
    return _shape


BROKER_POOL_WAIT_SECONDS = 10.0
"""How long a worker's own write to the broker's Redis waits for a free connection."""


@functools.cache
def _broker_for(pid: int) -> redis.Redis:
    # Sized like the effect store's pool: a gevent worker writes for every one of its tasks at once.
    pool = redis.BlockingConnectionPool.from_url(
        get_settings().broker_url.get_secret_value(),
        max_connections=shape().connections,
        timeout=BROKER_POOL_WAIT_SECONDS,
    )
    return redis.Redis(connection_pool=pool)


def broker_redis() -> redis.Redis:
    """This process's client for the broker's Redis, where the queues, the ledger and the dead
    letters are (pool children each get their own), for taskhub's own writes beside kombu's."""
    return _broker_for(os.getpid())


def is_green() -> bool:
    """True in a gevent worker: blocking calls yield to other tasks, soft limits need help."""
    return _shape.pool is WorkerPool.GEVENT


def _pool_name(pool_cls: object) -> str:
    """A Celery pool class's -P alias or module, whichever the worker holds at the moment."""
    return str(pool_cls if isinstance(pool_cls, str) else getattr(pool_cls, "__module__", ""))


def pool_forks(pool_cls: object) -> bool:
    """True when a Celery pool class runs its tasks in forked child processes (prefork)."""
    name = _pool_name(pool_cls)
    return any(forks in name for forks in ("prefork", "processes"))


def pool_kind(pool_cls: object) -> WorkerPool:
    """The WorkerPool a Celery pool class (or its -P alias) stands for."""
    return WorkerPool.GEVENT if "gevent" in _pool_name(pool_cls) else WorkerPool.PREFORK


@worker_init.connect
def _record_shape(sender: Any = None, **_: object) -> None:
    """Size the broker's connection pool for this worker before its consumer connects.

    kombu's Redis channel allows 10 connections by default and raises rather than waits past
    them; a gevent worker acks from hundreds of greenlets at once (MaxConnectionsError).
    """
    global _shape
    if sender is None:
        return
    concurrency = max(_count(sender.concurrency), _count(getattr(sender, "max_concurrency", 0)))
    kind = pool_kind(sender.pool_cls)
    _shape = WorkerShape(kind, 1 if pool_forks(sender.pool_cls) else concurrency)
    options = dict(sender.app.conf.broker_transport_options or {})
    options["max_connections"] = WorkerShape(kind, concurrency).connections
    sender.app.conf.broker_transport_options = options
    if kind is WorkerPool.GEVENT:
        _run_signal_handlers_in_greenlets()


def _count(value: object) -> int:
    """A concurrency as Celery holds it before the worker starts: a number, or "auto"."""
    try:
        return max(1, int(str(value)))
    except ValueError:
        return os.cpu_count() or 1


def install_slot_lender(lender: Callable[[], Any]) -> None:
    """Let `lend_slot` hand a waiting task's pool slot to another task (set by the autoscaler,
    which knows the pool and the consumer)."""
    global _slot_lender
    _slot_lender = lender


@contextmanager
def lend_slot() -> Iterator[None]:
    """While a task waits for an upstream's turn, another task may use its slot.

    Outside a gevent worker this does nothing: a prefork child cannot run two tasks at once.
    """
    if _slot_lender is None or not is_green():
        yield
        return
    with _slot_lender():
        yield


def _run_signal_handlers_in_greenlets() -> None:
    """Run Celery's shutdown handlers in a greenlet of their own.

    A Python signal handler runs in whatever greenlet is current, usually gevent's hub, where
    the soft shutdown's wait raises BlockingSwitchOutError and the worker dies without
    requeueing its tasks. Every handler Celery installs from now on goes through this wrapper.
    """
    import gevent

    signals = platforms.signals

    class GreenSignals(type(signals)):  # type: ignore[misc]
        def __setitem__(self, name: str, handler: Any) -> None:
            super().__setitem__(name, _in_greenlet(handler, gevent.spawn))

    signals.__class__ = GreenSignals


_GREEN_MARK = "_taskhub_green"
"""Set on a handler already wrapped to run in a greenlet, so that it is not wrapped twice."""


def _in_greenlet(handler: Any, spawn: Callable[..., Any]) -> Any:
    if not callable(handler) or getattr(handler, _GREEN_MARK, False):
        return handler

    def run(*args: Any) -> None:
        try:
            handler(*args)
        except BaseException as error:  # a hard shutdown raises to end the process now
            log.warning("worker: %s during shutdown; exiting now", type(error).__name__)
            sys.stdout.flush()
            os._exit(EX_HARD_SHUTDOWN)

    def green(*args: Any) -> None:
        spawn(run, *args)

    setattr(green, _GREEN_MARK, True)
    return green
