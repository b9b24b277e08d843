"""Exponential backoff: a wait that doubles after each failure up to a ceiling, and resets on
success. The bridge uses it for MQTT reconnects, Redis retries and held acks.
"""

from __future__ import annotations

from bridge.clock import SYSTEM_CLOCK, Clock


class Backoff:
    def __init__(self, min_delay: float, max_delay: float, clock: Clock = SYSTEM_CLOCK) -> None:
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.clock = clock
        self.delay = min_delay
        self.failures = 0
        """Consecutive failures since the last success."""
        self._until = 0.0

    def ready(self) -> bool:
        """Whether the current wait is over."""
        return self.clock.now() >= self._until

    def remaining(self) -> float:
        return max(0.0, self._until - self.clock.now())

    def wait(self) -> None:
        """Start a wait of the current delay, without growing it."""
        self._until = self.clock.now() + self.delay

    def failed(self) -> None:
        """Wait the current delay, then double it for next time."""
        self.wait()
        self.failures += 1
        self.delay = min(self.delay * 2, self.max_delay)

    def succeeded(self) -> None:
        self.delay = self.min_delay
        self.failures = 0
        self._until = 0.0
