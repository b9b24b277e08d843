"""What the route queues hold, read from the broker's Redis: tasks waiting (priority sub-queues
included), tasks taken and not yet acked, the oldest waiting task's age, and the ready workers
consuming each queue. `taskhub status` prints it; the bridge serves it as Prometheus metrics.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from taskhub import redis_keys
from taskhub.deadletters import DeadLetterStream
from taskhub.deferral import sent_at_of
from taskhub.telemetry.beats import WorkerBeat, worker_beats


@dataclass(frozen=True, slots=True)
class QueueState:
    name: str
    waiting: int
    unacked: int
    oldest_age: float
    """Seconds the oldest waiting task has waited; 0 when none waits or none carries a time."""
    consumers: int
    """Ready workers consuming this queue."""

    @property
    def depth(self) -> int:
        return self.waiting + self.unacked


def list_tails(client: redis.Redis, names: Sequence[str]) -> list[tuple[int, float | None]]:
    """For each kombu list in `names`, in one round trip: its length, and when the task at its
    tail (the next to be taken, the oldest) was first queued (None if empty or it does not say)."""
    with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.llen(name)
            pipe.lindex(name, -1)  # kombu pushes on the left and takes from the right
        replies = pipe.execute()
    return [
        (int(length), None if tail is None else sent_at_of(tail))
        for length, tail in zip(replies[0::2], replies[1::2], strict=True)
    ]


def waiting_and_oldest(tails: Sequence[tuple[int, float | None]]) -> tuple[int, float | None]:
    """Several lists' tails together: tasks waiting, and the oldest first-queued time known."""
    known = [sent for _, sent in tails if sent is not None]
    return sum(length for length, _ in tails), min(known) if known else None


def read_queues(
    client: redis.Redis,
    queues: Sequence[str],
    workers: Iterable[WorkerBeat],
    now: float | None = None,
) -> list[QueueState]:
    """Every queue in `queues`, as Redis holds it now."""
    per_queue = len(redis_keys.kombu_priority_lists(""))
    tails = list_tails(
        client, [name for queue in queues for name in redis_keys.kombu_priority_lists(queue)]
    )
    unacked = unacked_by_queue(client)
    ready = [beat for beat in workers if beat.ready]
    now = time.time() if now is None else now
    states = []
    for n, queue in enumerate(queues):
        waiting, oldest = waiting_and_oldest(tails[n * per_queue : (n + 1) * per_queue])
        states.append(
            QueueState(
                name=queue,
                waiting=waiting,
                unacked=unacked.get(queue, 0),
                oldest_age=0.0 if oldest is None else max(0.0, now - oldest),
                consumers=sum(1 for beat in ready if queue in beat.queues),
            )
        )
    return states


def unacked_by_queue(client: redis.Redis) -> Counter[str]:
    """How many unacked tasks each queue has. kombu stores each as JSON `[message, exchange,
    routing_key]`; the routing key (the queue, on the default exchange) is read off its end."""
    counts: Counter[str] = Counter()
    for _, raw in client.hscan_iter(redis_keys.KOMBU_UNACKED, count=1000):
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        counts[text.rstrip().removesuffix("]").rsplit('"', 2)[-2]] += 1
    return counts


class QueueCollector(Collector):
    """Prometheus collector reading the queues and the dead-letter counts at each scrape."""

    def __init__(self, client: redis.Redis, key_prefix: str, queues: Sequence[str]) -> None:
        self.client = client
        self.key_prefix = key_prefix
        self.queues = list(queues)
        self.letters = DeadLetterStream(client, key_prefix)

    def collect(self) -> Iterator[Metric]:
        states = read_queues(self.client, self.queues, worker_beats(self.client, self.key_prefix))
        families = {
            "celery_queue_length": ("Tasks waiting in the queue, all priorities.", "waiting"),
            "taskhub_queue_unacked": ("Tasks taken by a worker and not yet acked.", "unacked"),
            "taskhub_queue_depth": ("Tasks waiting or taken and not yet acked.", "depth"),
            "taskhub_queue_oldest_age_seconds": (
                "Seconds the oldest waiting task has waited.",
                "oldest_age",
            ),
            "celery_active_consumer_count": ("Ready workers consuming the queue.", "consumers"),
        }
        for name, (documentation, field) in families.items():
            family = GaugeMetricFamily(name, documentation, labels=["queue_name"])
            for state in states:
                family.add_metric([state.name], float(getattr(state, field)))
            yield family
        memory = self.client.info("memory")
        for name, field, documentation in (
            ("taskhub_redis_memory_used_bytes", "used_memory", "Memory the broker's Redis uses."),
            ("taskhub_redis_maxmemory_bytes", "maxmemory", "The broker's maxmemory; 0: none."),
        ):
            yield GaugeMetricFamily(name, documentation, value=float(memory.get(field, 0)))
        letters = CounterMetricFamily(
            "taskhub_deadletters", "Dead letters ever added, by reason.", labels=["reason"]
        )
        for reason, count in sorted(self.letters.counts().items()):
            letters.add_metric([reason], float(count))
        yield letters
