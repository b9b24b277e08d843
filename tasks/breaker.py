"""A circuit breaker per upstream host, shared by every worker through Redis.

After `breaker_failures` 5xx answers or timeouts within `breaker_window` seconds, the breaker
opens: every worker holds off the host for `breaker_cooldown` seconds and defers its tasks (no
retry is spent). Then one probe is let through; its success closes the breaker, its failure opens
it again. A 429's Retry-After pauses the host the same way, for as long as it says.
"""

from __future__ import annotations

import logging
import random
import time

from taskhub import redis_keys
from taskhub.deferral import Deferred
from taskhub.settings import HostPolicy, get_settings
from taskhub.telemetry.worker_metrics import worker_metrics
from tasks.store import store_redis

log = logging.getLogger("taskhub.upstream")

PROBE_SECONDS = 30.0
"""How long one worker holds the right to probe a half-open breaker."""
HALF_OPEN_RETRY_SECONDS = 1.0
"""How soon a task that found another worker probing tries again."""
OPEN_STATE_KEPT_SECONDS = 3600
"""An open breaker's record outlives its cool-down, so a probe's failure finds it half-open."""
STATE_READ_EVERY = 0.1
"""Seconds a process reuses what it last read of a host's state: two Redis round trips a task
saved, at the cost of noticing another worker's pause or open breaker this much later."""

_seen: dict[str, tuple[float, float | None, float | None]] = {}
"""host -> (when read, open_until, paused_until), this process's recent view."""


def _keys(host: str) -> tuple[str, str, str, str]:
    return redis_keys.upstream(get_settings().key_prefix, host)


class Breaker:
    """One host's breaker and pause, as every worker sees them."""

    def __init__(self, host: str, policy: HostPolicy) -> None:
        self.host = host
        self.policy = policy
        self.open_until, self.failures, self.probe, self.paused_until = _keys(host)
        self.probing = False

    def state(self) -> tuple[float | None, float | None]:
        """(open_until, paused_until) as every worker sees them, at most STATE_READ_EVERY old."""
        now = time.monotonic()
        seen = _seen.get(self.host)
        if seen is not None and now - seen[0] < STATE_READ_EVERY:
            return seen[1], seen[2]
        raw = store_redis().mget(self.open_until, self.paused_until)
        open_until, paused_until = (None if value is None else float(value) for value in raw)
        _seen[self.host] = (now, open_until, paused_until)
        self._show_open(open_until is not None and open_until > time.time())
        return open_until, paused_until

    def _show_open(self, is_open: bool) -> None:
        worker_metrics().breaker_open.labels(self.host).set(1 if is_open else 0)

    def admit(self) -> None:
        """Return if a request may go to the host now; raise Deferred saying for how long not."""
        open_until, paused_until = self.state()
        now = time.time()
        if paused_until is not None and paused_until > now:
            raise Deferred(paused_until - now, f"{self.host} asked to wait (429)")
        if open_until is None:
            return
        if open_until > now:
            raise Deferred(open_until - now, f"breaker open for {self.host}")
        if store_redis().set(self.probe, "1", nx=True, ex=int(PROBE_SECONDS)):
            self.probing = True
            log.info("breaker half-open for %s: probing", self.host)
            return
        raise Deferred(HALF_OPEN_RETRY_SECONDS * random.uniform(1, 2), f"{self.host} probing")

    def succeeded(self) -> None:
        if self.probing:
            store_redis().delete(self.open_until, self.failures, self.probe)
            _seen.pop(self.host, None)
            self._show_open(False)
            log.info("breaker closed for %s", self.host)

    def failed(self) -> None:
        """Count a 5xx or timeout; open the breaker at the threshold or when a probe failed."""
        client = store_redis()
        if not self.probing:
            with client.pipeline(transaction=False) as pipe:
                pipe.incr(self.failures)
                pipe.expire(self.failures, int(self.policy.breaker_window), nx=True)
                count = int(pipe.execute()[0])
            if count < self.policy.breaker_failures:
                return
        until = time.time() + self.policy.breaker_cooldown
        with client.pipeline(transaction=True) as pipe:
            pipe.set(
                self.open_until,
                until,
                ex=int(self.policy.breaker_cooldown) + OPEN_STATE_KEPT_SECONDS,
            )
            pipe.delete(self.failures, self.probe)
            pipe.execute()
        _seen.pop(self.host, None)
        self._show_open(True)
        log.warning("breaker open for %s for %gs", self.host, self.policy.breaker_cooldown)

    def pause(self, seconds: float) -> None:
        """The host said 429: every worker waits `seconds` before its next request there."""
        until = time.time() + seconds
        store_redis().set(self.paused_until, until, px=max(1, int(seconds * 1000)))
        _seen.pop(self.host, None)
        if self.probing:
            store_redis().delete(self.probe)
