"""Delivery, Backoff and Backpressure on their own, against the in-memory writer, spool and clock
(tests/fakes/): where a batch goes, how the spool drains into Redis, when Redis's memory is read,
how waits grow and reset, and where the watermarks pause and resume reading. No server, no sleep.
"""

from __future__ import annotations

import logging
import time

import pytest

from bridge.backoff import Backoff
from bridge.backpressure import Backpressure, Memory
from bridge.clock import SYSTEM_CLOCK
from bridge.delivery import (
    DRAIN_CHUNK,
    MEMORY_CHECK_BYTES,
    MEMORY_CHECK_SECONDS,
    Delivery,
    Outcome,
)
from bridge.outbound import Outbound, OutboundKind
from bridge.publisher import PublishFailed
from tests.fakes.clock import FakeClock
from tests.fakes.spool import MemorySpool
from tests.fakes.writer import UNREACHABLE, FakeWriter

QUEUE = "readings"


def task(n: int, body_bytes: int = 10) -> Outbound:
    return Outbound(OutboundKind.TASK, QUEUE, f"{n}:".ljust(body_bytes, "x"), f"id-{n}")


def tasks(*numbers: int) -> list[Outbound]:
    return [task(n) for n in numbers]


def numbers(bodies: list[str]) -> list[int]:
    return [int(body.split(":")[0]) for body in bodies]


def spool_fault(delivery: Delivery) -> str | None:
    """Read afresh each time (mypy would keep an `assert`'s narrowing of the property)."""
    return delivery.spool_fault


def memory_paused(delivery: Delivery) -> bool:
    return delivery.backpressure.memory_full


def make_delivery(
    clock: FakeClock, spool_max: int = 10_000
) -> tuple[Delivery, FakeWriter, MemorySpool]:
    writer, spool = FakeWriter([QUEUE]), MemorySpool(spool_max)
    backpressure = Backpressure(high=100, low=50, memory_high=0.9, memory_low=0.8)
    delivery = Delivery(writer, spool, backpressure, Backoff(0.2, 1.6, clock), clock)
    return delivery, writer, spool


# The clock and Backoff.


def test_the_system_clock_reads_the_process_clocks() -> None:
    before_now, before_wall = time.monotonic(), time.time()
    now, wall = SYSTEM_CLOCK.now(), SYSTEM_CLOCK.wall()
    assert before_now <= now <= time.monotonic()
    assert before_wall <= wall <= time.time()


def test_backoff_doubles_after_each_failure_up_to_its_ceiling() -> None:
    clock = FakeClock()
    backoff = Backoff(0.2, 1.0, clock)
    waits = []
    for _ in range(5):
        backoff.failed()
        waits.append(round(backoff.remaining(), 3))
    assert waits == [0.2, 0.4, 0.8, 1.0, 1.0]
    assert backoff.failures == 5


def test_backoff_is_ready_once_its_wait_is_over() -> None:
    clock = FakeClock()
    backoff = Backoff(0.5, 4.0, clock)
    assert backoff.ready()
    backoff.failed()
    clock.advance(0.4)
    assert not backoff.ready()
    assert backoff.remaining() == pytest.approx(0.1)
    clock.advance(0.1)
    assert backoff.ready()
    assert backoff.remaining() == 0.0


def test_backoff_resets_to_its_floor_on_success() -> None:
    clock = FakeClock()
    backoff = Backoff(0.5, 4.0, clock)
    backoff.failed()
    backoff.failed()
    backoff.succeeded()
    assert backoff.ready()
    assert backoff.failures == 0
    backoff.failed()
    assert backoff.remaining() == pytest.approx(0.5)


def test_a_backoff_wait_does_not_grow_the_delay() -> None:
    clock = FakeClock()
    backoff = Backoff(0.5, 4.0, clock)
    backoff.wait()
    backoff.wait()
    assert backoff.remaining() == pytest.approx(0.5)
    assert backoff.failures == 0


# Backpressure.


def test_queue_depth_pauses_at_the_high_watermark_and_resumes_at_the_low_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="taskhub.bridge")
    backpressure = Backpressure(high=100, low=50, memory_high=0.9, memory_low=0.8)
    seen = []
    for deepest in (99, 100, 70, 51, 50, 99):
        backpressure.observe({"a": 1, "b": deepest})
        seen.append(backpressure.paused)
    assert seen == [False, True, True, True, False, False]
    backpressure.observe({})
    assert not backpressure.paused
    assert caplog.messages == [
        "queue depth 100 >= high watermark 100: pausing intake",
        "queue depth 50 <= low watermark 50: resuming intake",
    ]


def test_redis_memory_pauses_at_its_high_fraction_and_resumes_at_its_low_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="taskhub.bridge")
    backpressure = Backpressure(high=100, low=50, memory_high=0.9, memory_low=0.8)
    seen = []
    for used in (899, 900, 850, 800, 899):
        backpressure.observe_memory(Memory(used=used, limit=1000))
        seen.append(backpressure.memory_full)
    assert seen == [False, True, True, False, False]
    assert caplog.messages == [
        "redis memory 900 of maxmemory 1000 (90% >= 90%): pausing intake",
        "redis memory 800 of maxmemory 1000 (80% <= 80%): resuming intake",
    ]


def test_a_redis_without_maxmemory_never_pauses_reading() -> None:
    backpressure = Backpressure(high=100, low=50, memory_high=0.9, memory_low=0.8)
    backpressure.observe_memory(Memory(used=10**12, limit=0))
    assert Memory(used=10**12, limit=0).fill == 0.0
    assert not backpressure.paused


def test_a_refused_write_pauses_reading_until_memory_reads_low(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backpressure = Backpressure(high=100, low=50, memory_high=0.9, memory_low=0.8)
    backpressure.refused("OOM")
    backpressure.refused("OOM")
    assert backpressure.paused
    assert caplog.messages == ["redis refused a write (OOM): pausing intake"]
    backpressure.observe_memory(Memory(used=500, limit=1000))
    assert not backpressure.paused


# Delivery.


def test_a_batch_lands_in_redis_while_the_spool_is_empty() -> None:
    delivery, writer, spool = make_delivery(FakeClock())
    assert delivery.deliver(tasks(1, 2)) == [Outcome.LANDED, Outcome.LANDED]
    assert numbers(writer.queues[QUEUE]) == [1, 2]
    assert len(spool) == 0


def test_a_batch_redis_refuses_is_spooled_and_redis_waits_before_it_is_asked_again() -> None:
    clock = FakeClock()
    delivery, writer, _ = make_delivery(clock)
    writer.down = True
    assert delivery.deliver(tasks(1)) == [Outcome.SPOOLED]
    assert not delivery.redis_due
    writer.down = False
    assert delivery.deliver(tasks(2)) == [Outcome.SPOOLED]
    assert writer.attempts == 1
    assert delivery.redis_fault == f"redis is unreachable: {UNREACHABLE}"


def test_the_spool_says_why_it_would_refuse_a_batch() -> None:
    delivery, writer, _ = make_delivery(FakeClock(), spool_max=2)
    writer.down = True
    assert spool_fault(delivery) is None
    delivery.deliver(tasks(1, 2))
    assert spool_fault(delivery) == "the spool is full (2 messages)"
    assert delivery.deliver(tasks(3)) == [Outcome.HELD]
    assert delivery.held_because == "the spool is full (2 messages)"


def test_the_spool_drains_oldest_first_one_chunk_per_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="taskhub.bridge")
    clock = FakeClock()
    delivery, writer, _ = make_delivery(clock)
    writer.down = True
    count = 2 * DRAIN_CHUNK + 7
    delivery.deliver(tasks(*range(count)))
    writer.down = False
    clock.advance(3.0)
    delivery.drain_spool()
    assert writer.batches == [DRAIN_CHUNK]
    assert "redis is back after 3.0s" in caplog.messages
    delivery.drain_spool()
    delivery.drain_spool()
    delivery.drain_spool()  # nothing left: no write
    assert writer.batches == [DRAIN_CHUNK, DRAIN_CHUNK, 7]
    assert numbers(writer.queues[QUEUE]) == list(range(count))
    assert delivery.drained == count
    assert caplog.messages.count(f"spool drained: {count} messages moved into redis") == 1


def test_a_chunk_redis_refuses_stays_in_the_spool_and_the_drain_waits_longer() -> None:
    clock = FakeClock()
    delivery, writer, spool = make_delivery(clock)
    writer.down = True
    delivery.deliver(tasks(1))
    clock.advance(0.2)
    delivery.drain_spool()
    assert len(spool) == 1
    assert writer.attempts == 2
    clock.advance(0.2)
    delivery.drain_spool()  # the wait doubled to 0.4 s
    assert writer.attempts == 2


def test_a_spool_read_failure_while_draining_waits_then_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="taskhub.bridge")
    clock = FakeClock()
    delivery, writer, spool = make_delivery(clock)
    writer.down = True
    delivery.deliver(tasks(1))
    writer.down = False
    clock.advance(0.2)
    spool.fail_next_read = 1
    delivery.drain_spool()
    assert spool_fault(delivery) == (
        "the spool cannot be written (reading the spool memory.spool failed: disk I/O error)"
    )
    delivery.drain_spool()  # within the spool's wait: not read again
    assert writer.attempts == 1
    clock.advance(0.2)
    delivery.drain_spool()
    assert numbers(writer.queues[QUEUE]) == [1]
    assert spool_fault(delivery) is None
    assert "the spool memory.spool takes writes again" in caplog.messages


def test_a_drained_chunk_the_spool_cannot_forget_is_drained_again_as_duplicates() -> None:
    clock = FakeClock()
    delivery, writer, spool = make_delivery(clock)
    writer.down = True
    delivery.deliver(tasks(1, 2))
    writer.down = False
    clock.advance(0.2)
    spool.fail_next_remove = 1
    delivery.drain_spool()
    assert numbers(writer.queues[QUEUE]) == [1, 2]
    assert len(spool) == 2
    clock.advance(0.2)
    delivery.drain_spool()
    assert numbers(writer.queues[QUEUE]) == [1, 2, 1, 2]
    assert writer.repeated == 2, "the ledger would not see the second copies"
    assert len(spool) == 0


def test_a_batch_of_enough_bytes_has_redis_memory_read_before_the_interval() -> None:
    clock = FakeClock()
    delivery, writer, _ = make_delivery(clock)
    writer.memory_limit, writer.memory_used = 1000, 950
    delivery.deliver(tasks(1))  # the first landing reads memory
    writer.memory_used = 100
    delivery.deliver(tasks(2))
    assert memory_paused(delivery), "memory read again before the interval"
    delivery.deliver([task(3, body_bytes=MEMORY_CHECK_BYTES)])
    assert not memory_paused(delivery)
    writer.memory_used = 950
    clock.advance(MEMORY_CHECK_SECONDS)
    delivery.deliver(tasks(4))
    assert memory_paused(delivery)


def test_a_memory_reading_that_fails_after_a_landing_does_not_undo_the_landing() -> None:
    delivery, _, _ = make_delivery(FakeClock())

    class MemoryUnreadable(FakeWriter):
        def memory(self) -> Memory:
            raise PublishFailed("TimeoutError: Timeout reading from socket")

    unreadable = MemoryUnreadable([QUEUE])
    delivery.publisher = unreadable
    assert delivery.deliver(tasks(1)) == [Outcome.LANDED]
    assert delivery.redis_fault is None
    assert delivery.redis_due


def test_depths_are_not_polled_while_redis_is_waited_out() -> None:
    clock = FakeClock()
    delivery, writer, _ = make_delivery(clock)
    writer.down = True
    delivery.poll_depths()
    assert writer.depth_reads == 1
    delivery.poll_depths()
    assert writer.depth_reads == 1
    writer.down = False
    writer.extra_depth[QUEUE] = 100
    clock.advance(0.2)
    delivery.poll_depths()
    assert delivery.backpressure.queues_full
