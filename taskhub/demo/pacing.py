"""Spacing a feed's messages at a steady rate, with a bounded catch-up after a stall.

A stall (a broker outage, a wait for acknowledgements) puts the feed behind its schedule. It makes
up at most CATCH_UP_SECONDS of it, in a burst; the rest of the lost time is skipped, as a live
source skips it: nothing was tweeted while the feed waited.
"""

from __future__ import annotations

import time
from collections.abc import Callable

CATCH_UP_SECONDS = 1.0
"""After a stall, the feed sends at most this many seconds' worth of messages at once."""


class Pacer:
    """Tells the feed how long to wait before each message to keep to `rate` per second."""

    def __init__(
        self,
        rate: float,
        *,
        catch_up: float = CATCH_UP_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`rate` 0: no pacing, every delay is 0."""
        if rate < 0 or catch_up < 0:
            raise ValueError(f"rate and catch_up must not be negative (got {rate:g}, {catch_up:g})")
        self._interval = 1 / rate if rate else 0.0
        self._catch_up = catch_up
        self._clock = clock
        self._due: float | None = None

    def delay(self) -> float:
        """Seconds to wait before the next message, which this counts as sent then."""
        if not self._interval:
            return 0.0
        now = self._clock()
        due = now if self._due is None else max(self._due, now - self._catch_up)
        self._due = due + self._interval
        return max(0.0, due - now)
