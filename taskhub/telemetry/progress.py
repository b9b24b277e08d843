"""Whether a worker's consumer is moving: when it last read a reply to its broker poll (BRPOP) or
finished a task. A worker's readiness is read from this, never from Celery's timer, which keeps
firing in a worker whose consumer is stuck (Celery #7276, #8030, #10302).

Stamped by the broker transport (taskhub/transport.py) in the process that consumes: the worker's
main process, in prefork as in gevent. A stamp is one clock read and one assignment.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Mapping

from taskhub.telemetry.probes import Verdict

RATE_WINDOW_SECONDS = 10.0
"""The finished-tasks rate a worker beat reports is taken over this many seconds."""


class ConsumerProgress:
    """The last moment the consumer progressed, and how many tasks it finished, by queue.

    A poll counts whatever BRPOP answered, a task or its one-second "nothing": both prove the
    consumer's connection and loop work. A finished task (its ack or reject) counts too, because
    a worker whose prefetch is full issues no BRPOP at all until a task ends.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.last = clock()
        self.finished: Counter[str] = Counter()
        """Tasks acked since the process started, by queue."""

    def polled(self) -> None:
        self.last = self.clock()

    def task_finished(self, queue: str | None) -> None:
        """A task was acked (its run ended here for good); `queue` is where it came from."""
        self.last = self.clock()
        if queue:
            self.finished[queue] += 1

    def task_given_back(self) -> None:
        """A task was rejected or requeued: the consumer moved, nothing was finished."""
        self.last = self.clock()

    def age(self) -> float:
        return max(0.0, self.clock() - self.last)

    def verdict(self, stall_after: float, running: int) -> Verdict:
        """Ready when the consumer progressed within `stall_after` seconds.

        A worker whose every slot holds a task running longer than that is not ready either:
        it takes no work now, though nothing is broken. The reason says which case it is.
        """
        age = self.age()
        if age <= stall_after:
            return Verdict(True, f"consumer progressed {age:.1f}s ago")
        if running:
            return Verdict(
                False,
                f"no task finished and no broker poll for {age:.0f}s (stall_after "
                f"{stall_after:g}s) while {running} tasks run: the pool is full of long tasks, "
                "or the consumer is stuck",
            )
        return Verdict(
            False,
            f"consumer stuck: no broker poll answered for {age:.0f}s "
            f"(stall_after {stall_after:g}s)",
        )


class FinishedRate:
    """Tasks finished per second by queue over the last RATE_WINDOW_SECONDS, from snapshots of
    the running counts (one per beat), so that finishing a task costs no more than a count."""

    def __init__(self, window: float = RATE_WINDOW_SECONDS) -> None:
        self.window = window
        self._snapshots: deque[tuple[float, dict[str, int]]] = deque()

    def update(self, now: float, finished: Mapping[str, int]) -> dict[str, float]:
        """Record the counts at `now` (monotonic) and return the rate since the oldest snapshot
        within the window (0 for every queue on the first call)."""
        current = dict(finished)
        self._snapshots.append((now, current))
        # Keep two at least: the newest and one to measure from.
        kept = 2
        while len(self._snapshots) > kept and now - self._snapshots[1][0] >= self.window:
            self._snapshots.popleft()
        then, before = self._snapshots[0]
        elapsed = now - then
        if elapsed <= 0:
            return dict.fromkeys(current, 0.0)
        return {
            queue: round((count - before.get(queue, 0)) / elapsed, 3)
            for queue, count in sorted(current.items())
        }


PROGRESS = ConsumerProgress()
"""This process's consumer (only a worker's consuming process stamps it)."""
