"""A pool sized from the backlog in Redis, not from what the worker already prefetched.

Celery's autoscaler counts reserved requests, and its worker prefetches `max` of them at start, so
the pool sits at its maximum from the first second and never shrinks. This one keeps prefetch
equal to the pool (the backlog stays in Redis, where this worker, its peers and KEDA see it),
grows at once to what the queues hold, and shrinks only idle slots after the pool has been too
big for a while.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from celery.worker import state
from celery.worker.autoscale import Autoscaler

from taskhub.routes import WorkerPool
from taskhub.settings import get_settings
from taskhub.shutdown import stopping
from taskhub.telemetry.queues import list_tails, waiting_and_oldest
from taskhub.worker import LENDING_FACTOR, install_slot_lender, pool_kind

log = logging.getLogger("taskhub.autoscale")


class Backlog:
    """How many tasks wait in the queues a worker consumes, and how long the oldest has waited."""

    def __init__(self, client: redis.Redis, queues: list[str]) -> None:
        self.client = client
        self.queues = queues

    def read(self) -> tuple[int, float]:
        """(depth, age of the oldest task in seconds; 0 when it carries no time)."""
        depth, oldest = waiting_and_oldest(list_tails(self.client, self.queues))
        return depth, (time.time() - oldest) if oldest is not None else 0.0


class BacklogAutoscaler(Autoscaler):  # type: ignore[misc]
    """`worker_autoscaler`: grows to the backlog within one tick, shrinks idle slots only after
    `shrink_after` seconds of too many, and lends a slot to other tasks while its task waits for
    an upstream (see taskhub.worker.lend_slot)."""

    def __init__(self, pool: Any, max_concurrency: int, min_concurrency: int = 0, **kw: Any):
        super().__init__(pool, max_concurrency, min_concurrency, **kw)
        self.settings = get_settings().autoscale
        self.green = pool_kind(type(pool).__module__) is WorkerPool.GEVENT
        self.lent = 0
        self._backlog: Backlog | None = None
        self._prefetch_synced = False
        self._too_big_since: float | None = None
        self._peak_need = 0
        self.last_need = 0
        self.last_depth = 0
        self.last_age = 0.0

    def body(self) -> None:
        with self.mutex:
            try:
                self.maybe_scale()
            except redis.RedisError as error:  # Redis away: keep the pool as it is
                log.warning("autoscale: cannot read the backlog: %s", error)
        time.sleep(self.settings.tick)

    def _maybe_scale(self, req: Any = None) -> bool:
        consumer = getattr(self.worker, "consumer", None)
        if consumer is None or getattr(consumer, "qos", None) is None:
            return False  # not consuming yet
        if stopping():
            return False  # shutting down: what the queues hold is for other workers
        if not self._prefetch_synced:
            self._sync_prefetch(consumer)
        depth, age = self.backlog().read()
        need = self.need(depth, age)
        self.last_need, self.last_depth, self.last_age = need, depth, age
        current = self.processes
        if need > current:
            self._too_big_since = None
            self._grow(need - current)
            return True
        if need < current:
            return self._maybe_shrink(need, current)
        self._too_big_since = None
        return False

    def need(self, depth: int, age: float) -> int:
        """Slots wanted: the tasks this worker holds (less those lending their slot) plus the
        queues' backlog; all of them once the oldest task has waited past `age_target`."""
        held = len(state.reserved_requests) - self.lent
        need = held + depth
        if depth and age > self.settings.age_target:
            need = self.max_concurrency
        return int(max(self.min_concurrency, min(self.max_concurrency, need)))

    def _maybe_shrink(self, need: int, current: int) -> bool:
        now = time.monotonic()
        if self._too_big_since is None:
            self._too_big_since, self._peak_need = now, need
            return False
        self._peak_need = max(self._peak_need, need)
        if now - self._too_big_since < self.settings.shrink_after:
            return False
        # A task lending its slot will take one back: it counts as busy here.
        idle = current - len(state.active_requests)
        shrink = min(current - max(self._peak_need, self.min_concurrency), idle)
        self._too_big_since = None
        if shrink <= 0:
            return False
        self._shrink(shrink)
        return True

    def _grow(self, n: int) -> None:
        log.info("autoscale: pool %d -> %d", self.processes, self.processes + n)
        self.pool.grow(n)
        self._sized()
        self._prefetch_by(n)

    def _shrink(self, n: int) -> None:
        log.info("autoscale: pool %d -> %d", self.processes, self.processes - n)
        try:
            self.pool.shrink(n)
        except ValueError:  # prefork: every process busy after all; try again next tick
            return
        self._sized()
        self._prefetch_by(-n)

    def _sized(self) -> None:
        # `inspect stats` shows the pool's `limit` as `max-concurrency`. A gevent pool's resizes
        # move it; a prefork pool's leave it at the size it started with (MIN), so it read 2
        # beside `autoscaler.current` 8. Only stats and a pool's first start read it.
        self.pool.limit = self.processes

    def _prefetch_by(self, n: int) -> None:
        consumer = self.worker.consumer
        consumer._update_prefetch_count(n)  # noqa: SLF001  (Celery's autoscaler calls it too)
        if self.green:  # one thread: apply now rather than on the loop's next turn
            consumer.qos.update()

    def _sync_prefetch(self, consumer: Any) -> None:
        """Celery prefetches `max` from the start; bring it down to the pool's size."""
        self._prefetch_synced = True
        excess = consumer.qos.value - self.processes * consumer.prefetch_multiplier
        consumer.initial_prefetch_count = self.processes * consumer.prefetch_multiplier
        if excess > 0:
            consumer.qos.decrement_eventually(excess)
        if self.green:
            consumer.qos.update()
            install_slot_lender(self.lend_slot)

    @contextmanager
    def lend_slot(self) -> Iterator[None]:
        """Give the calling task's pool slot and prefetch place to another task meanwhile; at
        most `max` slots are lent at once (taskhub.worker.LENDING_FACTOR)."""
        if self.lent >= self.max_concurrency * (LENDING_FACTOR - 1):
            yield
            return
        consumer = self.worker.consumer
        semaphore = self.pool._pool._semaphore  # noqa: SLF001  (the pool's only slot count)
        semaphore.release()
        consumer.qos.increment_eventually(1)
        consumer.qos.update()
        self.lent += 1
        try:
            yield
        finally:
            self.lent -= 1
            consumer.qos.decrement_eventually(1)
            consumer.qos.update()
            semaphore.acquire()

    def backlog(self) -> Backlog:
        if self._backlog is None:
            queues = sorted(self.worker.app.amqp.queues.consume_from)
            url = get_settings().broker_url.get_secret_value()
            client = redis.Redis.from_url(url, socket_timeout=5.0)
            self._backlog = Backlog(client, queues)
        return self._backlog

    def info(self) -> dict[str, Any]:
        return {
            **super().info(),
            "need": self.last_need,
            "backlog": self.last_depth,
            "backlog_age": round(self.last_age, 3),
            "lent": self.lent,
        }
