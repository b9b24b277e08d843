"""Backpressure on queue depth: above the high watermark the bridge stops reading MQTT, below the
low watermark it reads again. Redis stays bounded while the MQTT broker holds the backlog.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

log = logging.getLogger("taskhub.bridge")


class Backpressure:
    def __init__(self, high: int, low: int) -> None:
        self.high = high
        self.low = low
        self.paused = False

    def observe(self, depths: Mapping[str, int]) -> None:
        """Update from the latest depth of every route queue."""
        deepest = max(depths.values(), default=0)
        if not self.paused and deepest >= self.high:
            self.paused = True
            log.warning("queue depth %d >= high watermark %d: pausing intake", deepest, self.high)
        elif self.paused and deepest <= self.low:
            self.paused = False
            log.info("queue depth %d <= low watermark %d: resuming intake", deepest, self.low)
