"""One reading of the whole system from Redis alone: the route queues, the bridges and workers
that recorded a beat, and the dead letters. `taskhub status` prints it, once or over and over.

A queue's out rate is what its workers say they finished per second (their beats); its in rate is
that plus how fast its depth grew between two readings, so a single `taskhub status` reads twice.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from taskhub.deadletters import DeadLetterStream
from taskhub.telemetry.beats import BridgeBeat, WorkerBeat, bridge_beats, worker_beats
from taskhub.telemetry.queues import QueueState, read_queues

HOUR = 3600.0


@dataclass(frozen=True, slots=True)
class QueueReading:
    state: QueueState
    in_rate: float | None
    """Tasks per second arriving; None until two readings exist."""
    out_rate: float

    def to_json(self) -> dict[str, object]:
        state = self.state
        return {
            "name": state.name,
            "depth": state.depth,
            "waiting": state.waiting,
            "unacked": state.unacked,
            "oldest_age_seconds": round(state.oldest_age, 3),
            "consumers": state.consumers,
            "in_rate": None if self.in_rate is None else round(self.in_rate, 2),
            "out_rate": round(self.out_rate, 2),
        }


@dataclass(frozen=True, slots=True)
class Snapshot:
    taken_at: float
    queues: list[QueueReading]
    bridges: list[BridgeBeat]
    workers: list[WorkerBeat]
    letters_last_hour: dict[str, int]
    letters_total: dict[str, int]

    def stalled(self, max_age: float) -> list[QueueReading]:
        """Queues whose oldest task waited longer than `max_age` with no ready worker on them."""
        return [q for q in self.queues if q.state.oldest_age > max_age and not q.state.consumers]

    def to_json(self) -> dict[str, object]:
        return {
            "taken_at": self.taken_at,
            "queues": [queue.to_json() for queue in self.queues],
            "bridges": [beat.model_dump() for beat in self.bridges],
            "workers": [beat.model_dump() for beat in self.workers],
            "deadletters": {"last_hour": self.letters_last_hour, "total": self.letters_total},
        }


def take(
    client: redis.Redis,
    key_prefix: str,
    queues: Sequence[str],
    previous: Snapshot | None = None,
) -> Snapshot:
    """Read everything once; with `previous`, queues get their in rate too."""
    now = time.time()
    workers = worker_beats(client, key_prefix)
    states = read_queues(client, queues, workers, now)
    before = {q.state.name: q.state for q in previous.queues} if previous else {}
    elapsed = now - previous.taken_at if previous else 0.0
    readings = []
    for state in states:
        out_rate = float(sum(beat.finished_per_second.get(state.name, 0.0) for beat in workers))
        earlier = before.get(state.name)
        in_rate = None
        if earlier is not None and elapsed > 0:
            in_rate = max(0.0, out_rate + (state.depth - earlier.depth) / elapsed)
        readings.append(QueueReading(state, in_rate, out_rate))
    letters = DeadLetterStream(client, key_prefix)
    return Snapshot(
        taken_at=now,
        queues=readings,
        bridges=bridge_beats(client, key_prefix),
        workers=workers,
        letters_last_hour=letters.counts_since(HOUR, now),
        letters_total=letters.counts(),
    )
