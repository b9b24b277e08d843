"""Time as the bridge's loop reads it: one Clock for holds, backoff, lingers, grace periods and
batch ages, so a unit test can drive all of them with a fake clock instead of sleeping.

The loop never sleeps itself: it waits only inside the message source's `pump(timeout)`.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds: for waits, deadlines and ages."""
        ...

    def wall(self) -> float:
        """Epoch seconds: to compare with a message's own publish time."""
        ...


class SystemClock:
    """The process's clocks, as the bridge reads them in production."""

    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()


SYSTEM_CLOCK: Clock = SystemClock()
