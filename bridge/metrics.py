"""The bridge's Prometheus metrics (docs/observability.md, "Bridge"), in a registry of its own with
the queue and dead-letter metrics read from Redis beside them.

The loop does 25,000 messages a second, so it pays almost nothing here: counters and gauges are
read from the bridge's own counts and state at scrape time, and the histograms take a whole
batch's observations at once.
"""

from __future__ import annotations

import logging
import threading
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from bridge.state import BridgeState

log = logging.getLogger("taskhub.bridge")

BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000)
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)
"""Seconds: a batch lands in about a millisecond; Redis outages and holds stretch it to minutes."""
PAUSE_REASONS = ("queues_full", "memory_full")


class BulkHistogram:
    """A histogram that takes many equal observations in one call, `observe(value, count)`:
    prometheus_client's takes one at a time, which would cost a lock per message."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = tuple(float(bound) for bound in buckets)
        self._counts = [0] * (len(self.bounds) + 1)
        """Per bucket (not cumulative); the last one is +Inf."""
        self._sum = 0.0
        self._lock = threading.Lock()
        """A scrape reads from another thread: counts and sum must agree."""

    def observe(self, value: float, count: int = 1) -> None:
        slot = bisect_left(self.bounds, value)  # the first bound >= value: Prometheus's `le`
        with self._lock:
            self._counts[slot] += count
            self._sum += value * count

    def family(self) -> HistogramMetricFamily:
        with self._lock:
            counts, total = list(self._counts), self._sum
        buckets, running = [], 0
        for bound, count in zip((*map(repr, self.bounds), "+Inf"), counts, strict=True):
            running += count
            buckets.append((bound, float(running)))
        return HistogramMetricFamily(
            self.name, self.documentation, buckets=buckets, sum_value=total
        )


class BatchMetrics:
    """What the loop records per landed batch: the histograms and the dead letters by reason."""

    def __init__(self) -> None:
        self.batch_size = BulkHistogram(
            "taskhub_bridge_batch_size",
            "Messages per batch put into Redis or the spool.",
            BATCH_SIZE_BUCKETS,
        )
        self.landing = BulkHistogram(
            "taskhub_bridge_landing_seconds",
            "Seconds from reading a message off MQTT to having it in Redis or the spool.",
            LATENCY_BUCKETS,
        )
        self.publish_to_landed = BulkHistogram(
            "taskhub_bridge_publish_to_landed_seconds",
            "Seconds from a message's own sent_at (where it carries one) to having it in Redis "
            "or the spool.",
            LATENCY_BUCKETS,
        )
        self.deadlettered: Counter[str] = Counter()

    def landed(
        self, size: int, read_at: Iterable[float], sent_at: Iterable[float], now: float, wall: float
    ) -> None:
        """One batch landed at `now` (monotonic) and `wall` (epoch): its messages' read times and
        the publish times of those that carry one."""
        self.batch_size.observe(size)
        # A read from the socket brings hundreds of messages with one read time: one observation
        # per read, not per message.
        for read, count in Counter(read_at).items():
            self.landing.observe(now - read, count)
        for sent in sent_at:
            self.publish_to_landed.observe(max(0.0, wall - sent))  # the publisher's clock may lead


class BridgeCollector:
    """The bridge's counters and gauges, read from it at each scrape."""

    def __init__(
        self,
        state: Callable[[], BridgeState],
        counts: Callable[[], dict[str, int]],
        batches: BatchMetrics,
    ) -> None:
        self.state = state
        self.counts = counts
        self.batches = batches

    def collect(self) -> Iterator[Metric]:
        counts = self.counts()
        for name, documentation in (
            ("received", "MQTT messages the bridge took to judge."),
            ("landed", "Tasks put into Redis."),
            ("spooled", "Tasks put into the spool while Redis could not take them."),
            ("abandoned", "Messages given up unacked (connection lost, shutdown): redelivered."),
            ("duplicates", "Retained replays skipped, and redeliveries of a task already landed."),
            ("replies_published", "Replies to MQTT 5 requests the MQTT broker acknowledged."),
        ):
            yield CounterMetricFamily(f"taskhub_bridge_{name}", documentation, counts[name])
        letters = CounterMetricFamily(
            "taskhub_bridge_deadlettered",
            "Dead letters this bridge wrote, by reason.",
            labels=["reason"],
        )
        for reason, count in sorted(list(self.batches.deadlettered.items())):
            letters.add_metric([reason], count)
        yield letters
        state = self.state()
        yield _gauge("in_flight", "MQTT messages read and not yet acked.", state.in_flight)
        yield _gauge("held", "Messages in a batch neither Redis nor the spool took.", state.held)
        paused = GaugeMetricFamily(
            "taskhub_bridge_paused", "1 while intake is paused for this reason.", labels=["reason"]
        )
        for reason in PAUSE_REASONS:
            paused.add_metric([reason], float(reason in state.paused))
        yield paused
        yield _gauge("mqtt_connected", "1 while connected to MQTT.", state.connected)
        yield _gauge("spool_depth", "Messages waiting in the spool.", state.spool_depth)
        yield _gauge("ready", "1 when /readyz would answer 200.", state.ready().ok)
        batches = self.batches
        for histogram in (batches.batch_size, batches.landing, batches.publish_to_landed):
            yield histogram.family()


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"taskhub_bridge_{name}", documentation, value=float(value))


class WithoutRedis:
    """A collector reading Redis, skipped for a scrape while Redis does not answer, so the
    bridge's own metrics (the ones that matter most then) are still served."""

    def __init__(self, inner: Collector) -> None:
        self.inner = inner

    def collect(self) -> Iterable[Metric]:
        try:
            return list(self.inner.collect())
        except redis.RedisError as error:
            log.debug("queue metrics skipped: %s", error)
            return []


def bridge_registry(bridge: BridgeCollector, queues: Collector) -> CollectorRegistry:
    """The bridge's own registry (never the global default): its metrics, and the queues'."""
    registry = CollectorRegistry()
    registry.register(bridge)
    registry.register(WithoutRedis(queues))
    return registry


def exposition(registry: CollectorRegistry) -> Callable[[], bytes]:
    return lambda: generate_latest(registry)
