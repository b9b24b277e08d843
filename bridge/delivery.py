"""Where each batch goes: Redis if it takes it, else the durable spool, else nowhere yet (held,
unacked). While the spool holds anything, new batches queue behind it so arrival order survives.
Landing also watches Redis's memory, so the bridge pauses before Redis refuses writes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from enum import StrEnum

from bridge.backoff import Backoff
from bridge.backpressure import Backpressure
from bridge.clock import SYSTEM_CLOCK, Clock
from bridge.outbound import Outbound
from bridge.ports import RedisWriter, Spooler
from bridge.publisher import PublishFailed, RedisFull
from bridge.spool import SpoolFailed, SpoolFull

log = logging.getLogger("taskhub.bridge")

DRAIN_CHUNK = 500
"""Spooled items moved into Redis per transaction while the spool drains."""
MEMORY_CHECK_SECONDS = 0.1
"""How often landing also reads Redis's memory (INFO costs about a round trip: not every batch)."""
MEMORY_CHECK_BYTES = 512 * 1024
"""Message bytes landed after which memory is read again, sooner than MEMORY_CHECK_SECONDS: the
bridge adds at most about twice this (queue and ledger) unseen, well inside the headroom above
TASKHUB_BRIDGE__MEMORY_HIGH_WATERMARK of any Redis bigger than a few tens of megabytes."""


class Outcome(StrEnum):
    LANDED = "landed"
    """Redis holds it: ack."""
    SPOOLED = "spooled"
    """The spool holds it on disk: ack; draining the spool will land it."""
    HELD = "held"
    """Neither could take it: do not ack; try again later."""


class Delivery:
    def __init__(
        self,
        publisher: RedisWriter,
        spool: Spooler,
        backpressure: Backpressure,
        redis_backoff: Backoff,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.publisher = publisher
        self.spool = spool
        self.backpressure = backpressure
        self.redis_backoff = redis_backoff
        self.clock = clock
        self._redis_down_since: float | None = None
        self._next_memory_check = 0.0
        self._landed_unchecked = 0
        self.drained = 0
        """Items moved from the spool into Redis since the start."""
        self.held_because = ""
        """Why the last batch was held: the spool full, or the disk refusing it."""
        self.spool_backoff = Backoff(redis_backoff.min_delay, redis_backoff.max_delay, clock)
        self._spool_failure: str | None = None
        self.redis_fault: str | None = None
        """Why Redis refused the last write (down, or full), or None if it took it."""

    @property
    def redis_due(self) -> bool:
        return self.redis_backoff.ready()

    @property
    def spool_fault(self) -> str | None:
        """Why the spool would refuse a batch now (full, or the disk refusing writes), or None."""
        if self._spool_failure is not None:
            return f"the spool cannot be written ({self._spool_failure})"
        if len(self.spool) >= self.spool.max_messages:
            return f"the spool is full ({len(self.spool)} messages)"
        return None

    def deliver(self, items: Sequence[Outbound]) -> list[Outcome]:
        """Put `items` somewhere durable and say where, one outcome per item."""
        if not len(self.spool) and self.redis_due and self._try_land(items):
            return [Outcome.LANDED] * len(items)
        try:
            self.spool.append(items)
        except SpoolFull:
            self.held_because = f"the spool is full ({len(self.spool)} messages)"
            return [Outcome.HELD] * len(items)
        except SpoolFailed as error:
            self._spool_failed(error)
            self.held_because = f"the spool cannot be written ({error})"
            return [Outcome.HELD] * len(items)
        self._spool_recovered()
        return [Outcome.SPOOLED] * len(items)

    def drain_spool(self) -> None:
        """Move the oldest spooled items to Redis, if Redis is due for another try and has room."""
        if (
            not len(self.spool)
            or not self.redis_due
            or self.backpressure.memory_full
            or not self.spool_backoff.ready()
        ):
            return
        try:
            last_seq, items = self.spool.oldest(DRAIN_CHUNK)
            if self._try_land(items):
                # A failure here drains the chunk again later: duplicates, absorbed downstream.
                self.spool.remove_through(last_seq)
                self.drained += len(items)
                if not len(self.spool):
                    log.info("spool drained: %d messages moved into redis", self.drained)
        except SpoolFailed as error:
            self._spool_failed(error)
            return
        self._spool_recovered()

    def poll_depths(self) -> None:
        """Refresh backpressure while paused (nothing is being landed to report depths)."""
        if not self.redis_due:
            return
        try:
            self.backpressure.observe(self.publisher.depths())
            self._observe_memory()
        except PublishFailed as error:
            self._redis_failed(error)

    def _observe_memory(self) -> None:
        self._next_memory_check = self.clock.now() + MEMORY_CHECK_SECONDS
        self._landed_unchecked = 0
        self.backpressure.observe_memory(self.publisher.memory())

    def _try_land(self, items: Sequence[Outbound]) -> bool:
        try:
            depths = self.publisher.land(items)
        except RedisFull as error:
            # Redis is up but full: this batch goes to the spool, reading pauses, and draining
            # waits until a memory reading shows room (poll_depths, while paused).
            self.backpressure.refused(error)
            self.redis_fault = f"redis is full: {error}"
            return False
        except PublishFailed as error:
            self._redis_failed(error)
            return False
        if self._redis_down_since is not None:
            log.info("redis is back after %.1fs", self.clock.now() - self._redis_down_since)
        self._redis_down_since = None
        self.redis_fault = None
        self.redis_backoff.succeeded()
        self.backpressure.observe(depths)
        self._landed_unchecked += sum(len(item.body) for item in items)
        if (
            self._landed_unchecked >= MEMORY_CHECK_BYTES
            or self.clock.now() >= self._next_memory_check
        ):
            try:
                self._observe_memory()
            except PublishFailed as error:  # the batch landed; the next one will find out
                log.debug("redis memory unread: %s", error)
        return True

    def _spool_failed(self, error: SpoolFailed) -> None:
        if self._spool_failure is None:
            log.error("%s: holding messages unacked until the disk takes writes again", error)
        self._spool_failure = str(error)
        self.spool_backoff.failed()

    def _spool_recovered(self) -> None:
        if self._spool_failure is not None:
            log.info("the spool %s takes writes again", self.spool.path)
            self._spool_failure = None
        self.spool_backoff.succeeded()

    def _redis_failed(self, error: PublishFailed) -> None:
        if self._redis_down_since is None:
            self._redis_down_since = self.clock.now()
            log.error("redis did not take a batch: %s; spooling to %s", error, self.spool.path)
        self.redis_fault = f"redis is unreachable: {error}"
        self.redis_backoff.failed()
