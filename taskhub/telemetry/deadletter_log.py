"""One WARNING line per dead letter, from every place that writes one, rate-limited per process:
a flood of bad input becomes a few lines and a count, never a flooded log.

The letters themselves are in the dead-letter stream and `taskhub_deadletters_total`; the log only
points at them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from taskhub.deadletters import DeadLetter
from taskhub.redaction import redact
from taskhub.terminal import visible

log = logging.getLogger("taskhub.deadletters")

LINES_PER_WINDOW = 10
"""Most dead-letter lines one process logs per window."""
WINDOW_SECONDS = 10.0
DETAIL_MAX_CHARS = 200
"""A letter's detail is cut here in the log; the stream keeps all of it."""


class RateLimitedLog:
    """Logs at most `limit` lines per `window` seconds; the rest are counted and summed up in one
    line once their window is over (at the next line, or at a `flush()`)."""

    def __init__(
        self,
        logger: logging.Logger,
        limit: int = LINES_PER_WINDOW,
        window: float = WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.limit = limit
        self.window = window
        self.clock = clock
        self._lock = threading.Lock()
        self._window_start = float("-inf")
        self._logged = 0
        self._suppressed = 0

    def warning(self, message: str, *args: object) -> None:
        with self._lock:
            self._roll_over(self.clock())
            if self._logged >= self.limit:
                self._suppressed += 1
                return
            self._logged += 1
        self.logger.warning(message, *args)

    def flush(self) -> None:
        """Write the summary of a window that is over, if it left lines out."""
        with self._lock:
            self._roll_over(self.clock())

    def _roll_over(self, now: float) -> None:
        if now - self._window_start < self.window:
            return
        if self._suppressed:
            self.logger.warning(
                "%d more dead letters not logged in the last %g s", self._suppressed, self.window
            )
        self._window_start, self._logged, self._suppressed = now, 0, 0


_letters = RateLimitedLog(log)


def log_dead_letter(letter: DeadLetter, entry_id: str = "") -> None:
    """The one line for a dead letter just written: reason, where it came from, which it is."""
    task = letter.task
    source = f"task {task.name}[{task.task_id}]" if task is not None else f"topic {letter.topic!r}"
    where = f" entry {entry_id}" if entry_id else ""
    # Both quote what came from outside: its control characters must not reach a terminal.
    detail = visible(redact(letter.detail)[:DETAIL_MAX_CHARS])
    source = visible(source)
    _letters.warning("dead-lettered as %s: %s%s: %s", letter.reason.value, source, where, detail)


def flush_dead_letter_log() -> None:
    """Called from a loop that runs anyway, so a flood's summary appears even once it stops."""
    _letters.flush()
