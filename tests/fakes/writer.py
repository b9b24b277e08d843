"""The Redis writer in memory: queues, a dead-letter stream and a ledger of task ids, landing a
batch whole or not at all, as `RedisPublisher` does in one MULTI.

`down` and `full` make every write fail as an unreachable Redis, or one at maxmemory, would;
`fail_next` fails only the next writes, for a failure at one chosen step.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Sequence

from bridge.backpressure import Memory
from bridge.outbound import Outbound, OutboundKind
from bridge.publisher import PublishFailed, RedisFull

UNREACHABLE = "ConnectionError: Error 111 connecting to 127.0.0.1:6379. Connection refused."
AT_MAXMEMORY = "OutOfMemoryError: command not allowed when used memory > 'maxmemory'."


class FakeWriter:
    def __init__(self, queues: Sequence[str]) -> None:
        self.queues: dict[str, list[str]] = {queue: [] for queue in queues}
        """Task bodies per queue, oldest first (the order a worker takes them in)."""
        self.letters: list[dict[str, str]] = []
        """Dead letters' fields, in stream order."""
        self.replies: list[dict[str, str]] = []
        """Reply outbox entries' fields, in stream order."""
        self.ledger: set[str] = set()
        self.letter_ids: list[str] = []
        self.repeated = 0
        self.down = False
        self.full = False
        self.memory_used = 0
        self.memory_limit = 0
        self.extra_depth: dict[str, int] = {}
        """Tasks in a queue beyond what the bridge landed (what workers have not taken)."""
        self.batches: list[int] = []
        """Sizes of the batches landed, in order."""
        self.attempts = 0
        """Calls of `land`."""
        self.depth_reads = 0
        """Calls of `depths` (the paused loop's polls)."""
        self.closed = False
        self._failures: deque[PublishFailed] = deque()

    def fail_next(self, error: PublishFailed, times: int = 1) -> None:
        self._failures.extend([error] * times)

    def _check(self) -> None:
        if self._failures:
            raise self._failures.popleft()
        if self.down:
            raise PublishFailed(UNREACHABLE)

    def land(self, items: Sequence[Outbound]) -> dict[str, int]:
        self.attempts += 1
        self._check()
        if self.full:
            raise RedisFull(AT_MAXMEMORY)
        ids = []
        for item in items:
            if item.kind is OutboundKind.TASK:
                if item.task_id in self.ledger:
                    self.repeated += 1
                self.ledger.add(item.task_id)
                self.queues.setdefault(item.key, []).append(item.body)
            elif item.kind is OutboundKind.REPLY:
                self.replies.append(json.loads(item.body))
            else:
                self.letters.append(json.loads(item.body))
                ids.append(f"{len(self.letters)}-0")
        self.letter_ids = ids
        self.batches.append(len(items))
        return self.depths()

    def depths(self) -> dict[str, int]:
        self.depth_reads += 1
        self._check()
        return {
            queue: len(bodies) + self.extra_depth.get(queue, 0)
            for queue, bodies in self.queues.items()
        }

    def memory(self) -> Memory:
        self._check()
        return Memory(self.memory_used, self.memory_limit)

    def close(self) -> None:
        self.closed = True

    def landed(self) -> list[str]:
        """Every task body landed, across queues, in landing order within each queue."""
        return [body for bodies in self.queues.values() for body in bodies]
