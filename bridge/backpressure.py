"""Backpressure on queue depth and Redis memory: above a high watermark the bridge stops reading
MQTT, below the low one it reads again. Redis stays bounded while the MQTT broker holds the backlog.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from taskhub.settings import BridgeSettings

log = logging.getLogger("taskhub.bridge")


@dataclass(frozen=True, slots=True)
class Memory:
    """Redis's memory as INFO reports it."""

    used: int
    """`used_memory`, bytes."""
    limit: int
    """`maxmemory`, bytes; 0 when Redis has no limit."""

    @property
    def fill(self) -> float:
        """Used memory as a fraction of maxmemory; 0 without a limit."""
        return self.used / self.limit if self.limit else 0.0


class Backpressure:
    def __init__(self, high: int, low: int, memory_high: float, memory_low: float) -> None:
        """`high`/`low`: queue depths; `memory_high`/`memory_low`: fractions of maxmemory."""
        self.high = high
        self.low = low
        self.memory_high = memory_high
        self.memory_low = memory_low
        self.queues_full = False
        self.memory_full = False

    @classmethod
    def for_bridge(cls, settings: BridgeSettings) -> Backpressure:
        """The watermarks the bridge's settings name."""
        return cls(
            settings.high_watermark,
            settings.low_watermark,
            settings.memory_high_watermark,
            settings.memory_low_watermark,
        )

    @property
    def paused(self) -> bool:
        """Whether the bridge should stop reading MQTT."""
        return self.queues_full or self.memory_full

    def observe(self, depths: Mapping[str, int]) -> None:
        """Update from the latest depth of every route queue."""
        deepest = max(depths.values(), default=0)
        if not self.queues_full and deepest >= self.high:
            self.queues_full = True
            log.warning("queue depth %d >= high watermark %d: pausing intake", deepest, self.high)
        elif self.queues_full and deepest <= self.low:
            self.queues_full = False
            log.info("queue depth %d <= low watermark %d: resuming intake", deepest, self.low)

    def observe_memory(self, memory: Memory) -> None:
        """Update from Redis's latest memory reading."""
        if not self.memory_full and memory.limit and memory.fill >= self.memory_high:
            self.memory_full = True
            log.warning(
                "redis memory %d of maxmemory %d (%.0f%% >= %.0f%%): pausing intake",
                memory.used,
                memory.limit,
                memory.fill * 100,
                self.memory_high * 100,
            )
        elif self.memory_full and memory.fill <= self.memory_low:
            self.memory_full = False
            log.info(
                "redis memory %d of maxmemory %d (%.0f%% <= %.0f%%): resuming intake",
                memory.used,
                memory.limit,
                memory.fill * 100,
                self.memory_low * 100,
            )

    def refused(self, reason: object) -> None:
        """Redis refused a write at maxmemory: pause until a reading shows room again."""
        if not self.memory_full:
            self.memory_full = True
            log.warning("redis refused a write (%s): pausing intake", reason)
