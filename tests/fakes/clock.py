"""A clock that moves only when told: holds, backoff, lingers and grace periods without sleeping."""

from __future__ import annotations

START_MONOTONIC = 1000.0
"""Not zero: the loop's timers start at 0.0, and a real monotonic clock is far past that."""
START_WALL = 1_800_000_000.0


class FakeClock:
    def __init__(self, now: float = START_MONOTONIC, wall: float = START_WALL) -> None:
        self._now = now
        self._wall = wall

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._wall

    def advance(self, seconds: float) -> None:
        """Let `seconds` pass, on both clocks."""
        self._now += seconds
        self._wall += seconds
