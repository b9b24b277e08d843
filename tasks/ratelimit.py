"""One rate limit per upstream host, shared by every worker process on every machine.

The count lives in Redis (the `limits` library's moving window: never more than N requests in
any one-second span, whoever sends them). In each process one task at a time asks Redis for the
next turn on a host, and the others queue behind it without holding a pool slot; when the line is
longer than `TASKHUB_HTTP__MAX_INLINE_WAIT` worth of turns, a task is deferred instead.
Set a host's limit a little under the upstream's own (docs/upstreams.md).
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections import defaultdict
from typing import TYPE_CHECKING

from limits import RateLimitItemPerSecond
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from taskhub import redis_keys, tracing
from taskhub.deferral import Deferred
from taskhub.settings import get_settings
from taskhub.telemetry.worker_metrics import worker_metrics
from taskhub.worker import lend_slot
from tasks.store import store_redis

if TYPE_CHECKING:
    from opentelemetry.util.types import AttributeValue

MIN_POLL_SECONDS = 0.002
"""Shortest wait between two asks for a turn (the window's edge is rounded to the millisecond)."""
WAIT_SPAN = "rate_limit.wait"
WAIT_SECONDS = "taskhub.rate_limit.wait_seconds"


class HostRateLimit:
    """This process's door to the shared per-host limits."""

    def __init__(self) -> None:
        client = store_redis()
        storage = RedisStorage(
            "redis://",
            connection_pool=client.connection_pool,
            key_prefix=redis_keys.rate_limits(get_settings().key_prefix),
        )
        self.limiter = MovingWindowRateLimiter(storage)
        self._gates: dict[str, threading.Lock] = defaultdict(threading.Lock)
        self._waiting: dict[str, int] = defaultdict(int)
        self._next_turn: dict[str, float] = defaultdict(float)

    def acquire(self, host: str, per_second: int, deadline: float) -> None:
        """`take_turn`, a span of its own when tracing is on (docs/tracing.md)."""
        if not tracing.enabled():
            self.take_turn(host, per_second, deadline)
            return
        attributes: dict[str, AttributeValue] = {
            "server.address": host,
            "taskhub.rate_limit.per_second": per_second,
        }
        with tracing.tracer().start_as_current_span(WAIT_SPAN, attributes=attributes) as span:
            started = time.monotonic()
            try:
                self.take_turn(host, per_second, deadline)
            finally:
                span.set_attribute(WAIT_SECONDS, time.monotonic() - started)

    def take_turn(self, host: str, per_second: int, deadline: float) -> None:
        """Return once this process may send one request to `host`; raise Deferred when the
        wait would be longer than `max_inline_wait` or run past `deadline` (monotonic).

        A process takes its turns at most one per 1/`per_second` seconds: a burst of turns
        counted at once would reach the upstream spread by scheduling, and the upstream's own
        window would then see more than the limit.
        """
        item = RateLimitItemPerSecond(per_second)
        spacing = 1.0 / per_second
        longest = get_settings().http.max_inline_wait
        ahead = self._waiting[host]
        if ahead * spacing > longest:
            raise Deferred(ahead * spacing, f"{host}: {ahead} tasks ahead for its rate limit")
        self._waiting[host] += 1
        started = time.monotonic()
        waited = ahead > 0  # queued behind another task's turn
        gate = self._gates[host]
        try:
            with lend_slot():  # queued for the gate without a slot
                gate.acquire()
            try:
                while True:
                    wait = self._next_turn[host] - time.monotonic()
                    if wait > 0:
                        waited = True
                        with lend_slot():
                            time.sleep(wait)
                    # The slot is back before the ask: a task that wins a turn sends at once.
                    if self.limiter.hit(item, host):
                        self._next_turn[host] = time.monotonic() + spacing
                        return
                    waited = True
                    reset, _ = self.limiter.get_window_stats(item, host)
                    wait = max(MIN_POLL_SECONDS, reset - time.time())
                    now = time.monotonic()
                    if now + wait > deadline or now - started + wait > longest * 2:
                        raise Deferred(wait, f"{host}: rate limit of {per_second}/s")
                    self._next_turn[host] = now + wait
            finally:
                gate.release()
        finally:
            self._waiting[host] -= 1
            _count_wait(host, time.monotonic() - started, waited)


def _count_wait(host: str, seconds: float, waited: bool) -> None:
    """Every turn's wait (or the wait before a deferral) goes in the histogram; those that were
    not granted at once are counted as waits."""
    metrics = worker_metrics()
    metrics.ratelimit_wait_seconds.labels(host).observe(seconds)
    if waited:
        metrics.ratelimit_waits.labels(host).inc()


@functools.cache
def _limits_for(pid: int) -> HostRateLimit:
    return HostRateLimit()


def host_rate_limit() -> HostRateLimit:
    return _limits_for(os.getpid())
