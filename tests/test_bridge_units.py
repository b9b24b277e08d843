"""The bridge's loop, branch by branch, against in-memory fakes (tests/fakes/): landing and acking
in order, the spool, holds, replay, stale drops, backpressure, shedding, dead letters and every
way of stopping, with a failure injected at each step. No server, no process, no sleep: the fake
clock moves only when the loop waits (an idle pump) or a test says so.

The real-server tests (test_bridge_outages.py, test_backpressure.py, test_spool.py,
test_end_to_end.py) prove the real parts do what these fakes do.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from bridge.backoff import Backoff
from bridge.backpressure import Backpressure
from bridge.delivery import Delivery
from bridge.loop import (
    BACKPRESSURE_POLL_SECONDS,
    SHUTDOWN_GRACE_SECONDS,
    SWEEP_INTERVAL_SECONDS,
    Bridge,
)
from bridge.message_spans import ABANDONED, SPOOLED, MessageSpans
from bridge.publisher import PublishFailed
from bridge.source import Received
from taskhub.intake import Intake, RawMessage
from taskhub.payloads import Payload
from taskhub.routes import Route, RouteTable
from taskhub.settings import BridgeSettings
from taskhub.task_messages import MessageBuilder, TaskCall
from taskhub.topics import TopicPattern
from taskhub.tracing import TRACEPARENT, TRACESTATE
from tests.fakes.clock import START_MONOTONIC, FakeClock
from tests.fakes.housekeeping import FakeBeats, FakePresence, FakeSweep
from tests.fakes.source import FakeSource
from tests.fakes.spool import MemorySpool
from tests.fakes.writer import UNREACHABLE, FakeWriter
from tests.support.tracing import (
    PUBLISHER_SPAN_ID,
    PUBLISHER_TRACE_ID,
    PUBLISHER_TRACEPARENT,
    PUBLISHER_TRACESTATE,
    Traceparent,
    private_provider,
)

TOPIC = "sensors/d1/readings"
QUEUE = "readings"
DEADLETTER_TOPIC = "bridge/deadletters"
RETRY_MIN = 0.2
"""TASKHUB_BRIDGE__REDIS_RETRY_MIN_DELAY here: the first wait after a failure."""
RETRY_MAX = 1.6


class Reading(Payload):
    n: int


ROUTES = RouteTable(
    [Route(TopicPattern("sensors/{device}/readings"), "tests.record", QUEUE, Reading, key="n")]
)


def reading(n: int) -> bytes:
    return json.dumps({"n": n}).encode()


def number_in(task_body: str) -> int:
    """The `n` a landed task message carries (kombu's envelope around Celery's body)."""
    args, _kwargs, _embed = json.loads(base64.b64decode(json.loads(task_body)["body"]))
    return int(args[0]["n"])


@dataclass
class Rig:
    clock: FakeClock
    source: FakeSource
    writer: FakeWriter
    spool: MemorySpool
    presence: FakePresence
    sweep: FakeSweep
    bridge: Bridge

    def send(self, *numbers: int, **options: Any) -> None:
        for n in numbers:
            self.source.send(TOPIC, reading(n), **options)

    def turn(self, times: int = 1) -> None:
        for _ in range(times):
            self.bridge.turn()

    def turn_until(self, done: Callable[[], bool], turns: int = 2000) -> None:
        for _ in range(turns):
            if done():
                return
            self.bridge.turn()
        raise AssertionError(f"not done after {turns} turns ({self.clock.now():.1f}s)")

    def wait(self, seconds: float) -> None:
        """Let `seconds` pass without a turn (the loop busy elsewhere, or a test's jump)."""
        self.clock.advance(seconds)

    @property
    def landed(self) -> list[int]:
        return [number_in(body) for body in self.writer.queues[QUEUE]]

    @property
    def acked(self) -> list[int]:
        return [json.loads(payload)["n"] for payload in self.source.acked]

    @property
    def backpressure(self) -> Backpressure:
        return self.bridge.delivery.backpressure


def make_rig(
    *,
    spool_max: int = 1000,
    read_ahead: int | None = None,
    per_pump: int | None = None,
    beats: FakeBeats | None = None,
    spans: Callable[[FakeClock], MessageSpans] | None = None,
    **settings: Any,
) -> Rig:
    """`spans`: tracing on, with the message spans this makes on the rig's clock."""
    clock = FakeClock()
    chosen: dict[str, Any] = {
        "batch_size": 100,
        "max_in_flight": 1000,
        "high_watermark": 50,
        "low_watermark": 25,
        "redis_retry_min_delay": RETRY_MIN,
        "redis_retry_max_delay": RETRY_MAX,
    }
    chosen.update(settings)
    bridge_settings = BridgeSettings(**chosen)
    source = FakeSource(clock, read_ahead=read_ahead, per_pump=per_pump)
    writer = FakeWriter([QUEUE])
    spool = MemorySpool(spool_max)
    delivery = Delivery(
        writer,
        spool,
        Backpressure.for_bridge(bridge_settings),
        Backoff(RETRY_MIN, RETRY_MAX, clock),
        clock,
    )
    presence, sweep = FakePresence(), FakeSweep()
    bridge = Bridge(
        source,
        Intake(ROUTES, bridge_settings.max_payload_bytes),
        MessageBuilder(origin="bridge-test"),
        delivery,
        sweep,
        presence,
        bridge_settings,
        "taskhub-test",
        beats,
        clock,
        spans=spans(clock) if spans is not None else None,
    )
    return Rig(clock, source, writer, spool, presence, sweep, bridge)


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]


# Landing and acking.


def test_a_batch_lands_in_redis_then_is_acked_in_arrival_order() -> None:
    rig = make_rig()
    landed_at_ack: list[int] = []
    rig.source.before_ack = lambda: landed_at_ack.extend(rig.landed)
    rig.send(1, 2, 3, 4, 5)
    rig.turn()
    assert rig.landed == [1, 2, 3, 4, 5]
    assert landed_at_ack == [1, 2, 3, 4, 5], "acks went out before the batch was in Redis"
    assert rig.acked == [1, 2, 3, 4, 5]
    assert rig.writer.batches == [5]
    assert rig.bridge.counters.landed == 5
    assert not rig.bridge.pending
    assert rig.bridge.state().in_flight == 0


def test_batches_are_cut_at_batch_size() -> None:
    rig = make_rig(batch_size=2, max_in_flight=10)
    rig.send(1, 2, 3, 4, 5)
    rig.turn(3)
    assert rig.writer.batches == [2, 2, 1]
    assert rig.acked == [1, 2, 3, 4, 5]


def test_a_lone_message_waits_out_the_linger_then_lands() -> None:
    rig = make_rig(batch_linger_ms=50)
    rig.send(1)
    rig.turn(3)
    rig.wait(0.04)
    rig.turn()
    assert rig.landed == [], "landed before the linger was over"
    rig.wait(0.02)
    rig.turn()
    assert rig.landed == [1]


def test_a_full_batch_does_not_wait_for_the_linger() -> None:
    rig = make_rig(batch_size=3, batch_linger_ms=5000)
    rig.send(1, 2, 3)
    rig.turn()
    assert rig.landed == [1, 2, 3]


def test_reading_waits_for_traffic_only_when_nothing_is_in_hand() -> None:
    rig = make_rig(batch_linger_ms=50)
    rig.turn()
    rig.send(1)
    rig.turn()
    rig.turn()  # one message in hand, lingering: the pump must not block on the socket
    assert rig.source.pump_timeouts == [0.1, 0.1, 0]


class _DueOutbox:
    """A reply outbox always `due` seconds from its next read."""

    published = 0

    def __init__(self, due: float) -> None:
        self.due = due

    def turn(self, *, reading: bool = True) -> None:
        pass

    def due_in(self) -> float:
        return self.due

    def settle(self) -> None:
        pass


def test_an_idle_loop_waits_for_traffic_only_until_the_reply_outbox_is_due() -> None:
    """Or a reply a worker added would wait the whole idle wait (docs/requests.md: 0.1 s)."""
    rig = make_rig()
    rig.bridge.replies = _DueOutbox(0.03)
    rig.turn()
    rig.bridge.replies = _DueOutbox(0.5)
    rig.turn()
    rig.source.drop_connection()  # nothing is read from the outbox: no reason to hurry
    rig.bridge.replies = _DueOutbox(0.0)
    rig.turn()
    assert rig.source.pump_timeouts == [0.03, 0.1, 0.1]


def test_an_idle_loop_does_not_spin_on_a_due_outbox_while_redis_is_down() -> None:
    rig = make_rig()
    rig.writer.down = True
    rig.send(1)
    rig.turn_until(lambda: not rig.bridge.delivery.redis_due)
    rig.bridge.replies = _DueOutbox(0.0)
    rig.source.pump_timeouts.clear()
    rig.turn()
    assert rig.source.pump_timeouts == [0.1]


def test_reading_stops_at_max_in_flight_until_a_batch_is_acked() -> None:
    rig = make_rig(batch_size=3, max_in_flight=3)
    rig.send(1, 2, 3, 4)
    rig.turn()
    assert rig.source.taken == 3
    assert rig.writer.batches == [3]
    rig.turn()
    assert rig.writer.batches == [3, 1]


def test_a_batch_is_not_cut_while_more_is_still_arriving() -> None:
    rig = make_rig(per_pump=2)
    rig.send(1, 2, 3, 4, 5)
    rig.turn(2)
    assert rig.writer.batches == [], "cut a batch with messages still on the socket"
    rig.turn()
    assert rig.writer.batches == [5]


def test_retained_replays_are_acked_in_their_turn_and_never_enqueued() -> None:
    rig = make_rig()
    rig.send(1)
    rig.send(2, retained_replay=True)
    rig.send(3)
    rig.turn()
    assert rig.landed == [1, 3]
    assert rig.acked == [1, 2, 3]
    assert rig.bridge.counts()["duplicates"] == 1


def test_a_batch_of_retained_replays_only_is_acked_without_a_write() -> None:
    rig = make_rig()
    rig.send(1, 2, retained_replay=True)
    rig.turn()
    assert rig.writer.attempts == 0
    assert rig.acked == [1, 2]
    assert rig.bridge.counters.retained_replays == 2


def test_a_message_publish_time_feeds_the_publish_to_landed_histogram() -> None:
    rig = make_rig()
    rig.source.send(TOPIC, json.dumps({"n": 1, "sent_at": rig.clock.wall() - 2}).encode())
    rig.send(2, sent_at=rig.clock.wall() - 4)
    rig.send(3)
    rig.turn()
    samples = {s.name: s.value for s in rig.bridge.batches.publish_to_landed.family().samples}
    assert samples["taskhub_bridge_publish_to_landed_seconds_count"] == 2
    assert samples["taskhub_bridge_publish_to_landed_seconds_sum"] == pytest.approx(6.0)


# Dead letters.


def test_a_bad_payload_becomes_a_dead_letter_landed_with_the_batch_and_copied_to_mqtt() -> None:
    rig = make_rig(deadletter_topic=DEADLETTER_TOPIC)
    rig.send(1)
    rig.source.send(TOPIC, b"not json")
    rig.source.send("elsewhere/x", b"{}")
    rig.send(2)
    rig.turn()
    assert rig.landed == [1, 2]
    assert [letter["reason"] for letter in rig.writer.letters] == ["invalid_json", "no_route"]
    assert len(rig.source.acked) == 4
    assert rig.bridge.counters.dead_lettered == 2
    assert rig.bridge.counters.landed == 2
    assert rig.bridge.batches.deadlettered == {"invalid_json": 1, "no_route": 1}
    assert [topic for topic, _ in rig.source.published] == [DEADLETTER_TOPIC] * 2
    assert json.loads(rig.source.published[0][1])["reason"] == "invalid_json"


def test_a_dead_letter_spooled_while_redis_is_down_counts_as_one() -> None:
    rig = make_rig()
    rig.writer.down = True
    rig.source.send(TOPIC, b"not json")
    rig.send(1)
    rig.turn()
    assert rig.bridge.counters.dead_lettered == 1
    assert rig.bridge.counters.spooled == 1
    assert len(rig.spool) == 2
    assert len(rig.source.acked) == 2


# Redis down: the spool.


def test_redis_refusing_a_batch_sends_it_to_the_spool_and_acks_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rig = make_rig()
    rig.writer.down = True
    rig.send(1, 2, 3)
    rig.turn()
    assert len(rig.spool) == 3
    assert rig.acked == [1, 2, 3]
    assert rig.bridge.counters.spooled == 3
    state = rig.bridge.state()
    assert state.redis_fault == f"redis is unreachable: {UNREACHABLE}"
    assert state.spool_depth == 3
    assert state.ready().ok, "the spool took the batch: still ready"
    assert errors(caplog) == [
        f"redis did not take a batch: {UNREACHABLE}; spooling to memory.spool"
    ]


def test_the_spool_drains_into_redis_in_order_once_redis_is_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="taskhub.bridge")
    rig = make_rig()
    rig.writer.down = True
    rig.send(1, 2, 3)
    rig.turn()
    rig.writer.down = False
    rig.send(4, 5)
    rig.turn()  # Redis's retry wait is not over: the new batch queues behind the spool
    assert rig.writer.attempts == 1
    assert [number_in(item.body) for _, item in rig.spool.rows] == [1, 2, 3, 4, 5]
    rig.turn_until(lambda: not len(rig.spool))
    assert rig.landed == [1, 2, 3, 4, 5]
    assert rig.acked == [1, 2, 3, 4, 5]
    assert rig.bridge.delivery.drained == 5
    assert rig.bridge.state().redis_fault is None
    assert "spool drained: 5 messages moved into redis" in caplog.messages
    rig.send(6)
    rig.turn()
    assert rig.landed == [1, 2, 3, 4, 5, 6], "straight to Redis again once the spool is empty"
    assert len(rig.spool) == 0


def test_while_the_spool_holds_anything_new_batches_queue_behind_it() -> None:
    rig = make_rig(spool_max=10)
    rig.writer.down = True
    rig.send(1, 2)
    rig.turn()
    rig.writer.down = False
    rig.wait(RETRY_MIN)
    rig.spool.fail_next_read = 1  # draining cannot read the spool this once
    rig.send(3)
    rig.turn()
    assert rig.landed == [], "a new batch overtook the spooled ones"
    assert [number_in(item.body) for _, item in rig.spool.rows] == [1, 2, 3]
    rig.turn_until(lambda: rig.landed == [1, 2, 3])


def test_the_drain_waits_out_the_redis_retry_delay_and_backs_off_while_redis_stays_down() -> None:
    rig = make_rig()
    rig.writer.down = True
    rig.send(1)
    rig.turn()
    attempts_at = []
    for _ in range(200):
        before = rig.writer.attempts
        rig.turn()  # idle: each turn waits 0.1 s for traffic
        if rig.writer.attempts > before:
            attempts_at.append(round(rig.clock.now() - 1000.0, 1))
    # Each failure doubles the wait (0.2, 0.4, 0.8), up to TASKHUB_BRIDGE__REDIS_RETRY_MAX_DELAY.
    gaps = [round(b - a, 1) for a, b in itertools.pairwise(attempts_at)]
    assert gaps[:3] == [0.4, 0.8, 1.6]
    assert set(gaps[3:]) == {1.6}
    assert len(rig.spool) == 1


def test_the_sweep_waits_while_the_spool_holds_anything_or_redis_is_down() -> None:
    rig = make_rig()
    rig.wait(SWEEP_INTERVAL_SECONDS)
    rig.turn()
    assert rig.sweep.sweeps == 1
    rig.writer.down = True
    rig.send(1)
    rig.turn()
    rig.wait(SWEEP_INTERVAL_SECONDS)
    rig.turn()
    assert rig.sweep.sweeps == 1, "swept while the spool held messages"
    rig.sweep.error = redis.ConnectionError("gone")
    rig.writer.down = False
    rig.turn_until(lambda: not len(rig.spool))
    rig.wait(SWEEP_INTERVAL_SECONDS)
    rig.turn()  # the sweep's error is logged and the loop goes on
    assert rig.sweep.sweeps == 2


# Holds: neither Redis nor the spool.


def test_a_full_spool_holds_the_batch_unacked_and_reading_stops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rig = make_rig(spool_max=2)
    rig.writer.down = True
    rig.send(1, 2, 3)
    rig.turn()
    assert rig.acked == []
    assert len(rig.spool) == 0
    state = rig.bridge.state()
    assert state.held == 3
    assert not state.ready().ok
    assert state.ready().why == "3 messages held: neither redis nor the spool took them"
    rig.send(4, 5)
    rig.turn()
    assert rig.source.taken == 3, "took more while held"
    assert len(rig.source.received) == 2, "the socket is still read (pings, acks)"
    rig.writer.down = False
    rig.turn_until(lambda: rig.acked == [1, 2, 3, 4, 5])
    assert rig.landed == [1, 2, 3, 4, 5]
    assert rig.bridge.state().held == 0
    holding = [line for line in errors(caplog) if "holding" in line]
    assert holding == [
        "redis is down and the spool is full (0 messages): holding 3 unacked messages; the mqtt "
        "broker keeps the rest"
    ]


def test_a_spool_the_disk_refuses_holds_the_batch_with_one_error_line_per_cause(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="taskhub.bridge")
    rig = make_rig()
    rig.writer.down = True
    rig.spool.broken = True
    rig.send(1, 2)
    rig.turn()
    first = errors(caplog)
    rig.turn(100)  # ten seconds of retries
    assert errors(caplog) == first, "the hold repeats its error lines"
    assert first == [
        f"redis did not take a batch: {UNREACHABLE}; spooling to memory.spool",
        "writing the spool memory.spool failed: database or disk is full: holding messages "
        "unacked until the disk takes writes again",
        "redis is down and the spool cannot be written (writing the spool memory.spool failed: "
        "database or disk is full): holding 2 unacked messages; the mqtt broker keeps the rest",
    ]
    state = rig.bridge.state()
    assert state.spool_fault == (
        "the spool cannot be written (writing the spool memory.spool failed: database or disk "
        "is full)"
    )
    assert state.ready().why.startswith("2 messages held")
    assert rig.acked == []
    rig.spool.broken = False
    rig.turn_until(lambda: rig.acked == [1, 2])
    assert len(rig.spool) == 2
    assert rig.bridge.state().spool_fault is None
    assert "the spool memory.spool takes writes again" in caplog.messages


def test_a_hold_retries_after_the_backoff_and_the_backoff_resets_on_success() -> None:
    rig = make_rig(spool_max=1)
    rig.writer.down = True
    rig.send(1, 2)
    rig.turn()
    attempts = rig.writer.attempts
    rig.turn()  # the hold's wait (0.2 s) is not over after one idle turn
    assert rig.writer.attempts == attempts
    rig.writer.down = False
    rig.turn_until(lambda: rig.acked == [1, 2])
    rig.writer.down = True
    rig.send(3, 4)
    rig.turn()
    rig.writer.down = False
    started = rig.clock.now()
    rig.turn_until(lambda: rig.acked == [1, 2, 3, 4])
    assert rig.clock.now() - started <= RETRY_MIN + 0.1, "the hold kept its old, longer wait"


# Connections lost: stale messages.


def test_messages_read_on_a_lost_connection_are_dropped_and_delivered_once_redelivered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Stale: read on a connection that has ended. An ack on a later connection would not count
    (packet ids belong to their connection) and the broker sends the message again anyway, so
    delivering the stale copy too would only make a duplicate."""
    rig = make_rig(batch_linger_ms=1000)
    rig.send(1, 2, 3)
    rig.turn()  # taken, lingering
    rig.source.drop_connection()
    rig.turn()  # reconnects: the broker sends 1-3 again on the new connection
    rig.wait(1.0)
    rig.turn()  # the batch is due: its first three are stale
    assert rig.bridge.counters.abandoned == 3
    assert rig.landed == []
    assert (
        "3 messages left unacked for the broker to redeliver: their mqtt connection was lost"
        in caplog.messages
    )
    rig.wait(1.0)
    rig.turn()
    assert rig.landed == [1, 2, 3]
    assert rig.acked == [1, 2, 3]
    assert rig.writer.repeated == 0


def test_a_held_batch_whose_connection_ended_meanwhile_is_dropped_not_delivered() -> None:
    rig = make_rig(spool_max=1)
    rig.writer.down = True
    rig.send(1, 2)
    rig.turn()
    rig.source.drop_connection()
    rig.writer.down = False
    rig.turn_until(lambda: rig.acked == [1, 2])
    assert rig.landed == [1, 2], "a stale copy was delivered as well"
    assert rig.bridge.counters.abandoned == 2


def test_a_connection_lost_between_landing_and_acking_gives_a_duplicate_the_ledger_counts() -> None:
    rig = make_rig()
    rig.send(1, 2)
    rig.source.before_ack = rig.source.drop_connection
    rig.turn()
    assert rig.landed == [1, 2]
    assert rig.acked == [], "acked on a connection that is gone"
    rig.turn_until(lambda: rig.acked == [1, 2])
    assert rig.landed == [1, 2, 1, 2]
    assert rig.bridge.counts()["duplicates"] == 2


def test_an_error_while_acking_ends_the_run_with_the_batch_unacked_and_all_closed() -> None:
    rig = make_rig()
    rig.send(1, 2)
    rig.source.ack_error = ConnectionResetError("reset by peer")
    with pytest.raises(ConnectionResetError):
        rig.bridge.run()
    assert rig.landed == [1, 2]
    assert rig.acked == []
    assert rig.bridge.counters.abandoned == 2
    assert rig.source.closed_with is False, "a crashed run ended its session"
    assert rig.spool.closed
    assert rig.writer.closed
    assert rig.presence.released


def test_messages_shed_past_the_read_ahead_are_collected_by_a_reconnect_in_order() -> None:
    rig = make_rig(read_ahead=2)
    rig.send(1, 2, 3, 4, 5)
    rig.turn_until(lambda: rig.acked == [1, 2, 3, 4, 5])
    assert rig.landed == [1, 2, 3, 4, 5]
    assert rig.source.collect_reconnects == 2


# Backpressure.


def test_deep_queues_pause_reading_until_they_drain_below_the_low_watermark() -> None:
    rig = make_rig(high_watermark=10, low_watermark=5)
    rig.writer.extra_depth[QUEUE] = 9
    rig.send(1)
    rig.turn()
    assert rig.bridge.state().paused == ("queues_full",)
    rig.send(2, 3)
    rig.turn(5)
    assert rig.source.taken == 1, "read while paused"
    rig.writer.extra_depth[QUEUE] = 5  # 6 in all: above the low watermark
    rig.wait(BACKPRESSURE_POLL_SECONDS)
    rig.turn(3)
    assert rig.source.taken == 1
    rig.writer.extra_depth[QUEUE] = 4
    rig.turn_until(lambda: rig.landed == [1, 2, 3])
    assert rig.bridge.state().paused == ()


def test_depths_are_polled_at_most_every_poll_interval_while_paused() -> None:
    rig = make_rig(high_watermark=10, low_watermark=5)
    rig.writer.extra_depth[QUEUE] = 20
    rig.send(1)
    rig.turn()
    reads = rig.writer.depth_reads
    rig.turn(10)  # 10 idle turns: 1 s
    assert 9 <= rig.writer.depth_reads - reads <= 11


def test_redis_memory_near_maxmemory_pauses_reading_and_the_spool_drain() -> None:
    rig = make_rig(memory_high_watermark=0.9, memory_low_watermark=0.8)
    rig.writer.memory_limit = 1000
    rig.writer.memory_used = 950
    rig.send(1)
    rig.turn()
    assert rig.bridge.state().paused == ("memory_full",)
    rig.send(2)
    rig.turn(3)
    assert rig.source.taken == 1
    rig.writer.memory_used = 800
    rig.turn_until(lambda: rig.landed == [1, 2])
    assert rig.bridge.state().paused == ()


def test_redis_at_maxmemory_spools_the_batch_and_drains_it_once_memory_reads_low() -> None:
    rig = make_rig()
    rig.writer.full = True
    rig.writer.memory_limit = 1000
    rig.writer.memory_used = 1000
    rig.send(1, 2)
    rig.turn()
    assert rig.acked == [1, 2]
    assert len(rig.spool) == 2
    state = rig.bridge.state()
    assert state.paused == ("memory_full",)
    assert state.redis_fault is not None
    assert state.redis_fault.startswith("redis is full: OutOfMemoryError")
    rig.writer.full = False
    rig.turn(5)
    assert len(rig.spool) == 2, "drained into a Redis that read full"
    rig.writer.memory_used = 500
    rig.turn_until(lambda: rig.landed == [1, 2])
    assert rig.bridge.state().paused == ()


def test_a_depth_poll_that_fails_counts_as_redis_down() -> None:
    rig = make_rig(high_watermark=10, low_watermark=5)
    rig.writer.extra_depth[QUEUE] = 20
    rig.send(1)
    rig.turn()
    rig.writer.down = True
    rig.wait(BACKPRESSURE_POLL_SECONDS)
    rig.turn()
    assert rig.bridge.state().redis_fault == f"redis is unreachable: {UNREACHABLE}"
    assert not rig.bridge.delivery.redis_due


# State beats and the client-id lease.


def test_state_beats_are_recorded_only_while_redis_is_due() -> None:
    beats = FakeBeats()
    rig = make_rig(beats=beats)
    rig.turn()
    assert len(beats.recorded) == 1
    rig.writer.down = True
    rig.send(1)
    rig.turn()
    assert len(beats.recorded) == 1, "a beat waited on a Redis known down"
    beats.failure = "redis is unreachable: gone"
    rig.writer.down = False
    assert rig.bridge.state().redis_fault == f"redis is unreachable: {UNREACHABLE}"
    rig.turn_until(lambda: not len(rig.spool))
    assert rig.bridge.state().redis_fault == "redis is unreachable: gone"


def test_another_bridge_on_the_client_id_stops_this_one_with_exit_code_1(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rig = make_rig()
    rig.presence.taken_by = "host-b:42:cafe"
    assert rig.bridge.run() == 1
    assert errors(caplog) == [
        "another bridge (host-b:42:cafe) runs as TASKHUB_MQTT__CLIENT_ID=bridge-test: two "
        "replicas on one client id take the MQTT session from each other; give each replica its "
        "own id; stopping"
    ]
    assert rig.presence.released


def test_a_client_id_lost_while_stopping_changes_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rig = make_rig(batch_linger_ms=1000)
    rig.send(1)
    rig.turn()
    rig.presence.taken_by = "host-b:42:cafe"
    rig.bridge.request_stop()
    assert rig.bridge.run() == 0
    assert rig.acked == [1]
    assert errors(caplog) == []


# Stopping.


def test_a_stop_delivers_and_acks_what_is_in_hand_then_exits_0(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="taskhub.bridge")
    beats = FakeBeats()
    rig = make_rig(batch_linger_ms=1000, beats=beats)
    rig.send(1, 2, 3)
    rig.turn()
    assert rig.landed == []
    rig.send(4, 5)  # read after the stop: left unacked for the next session
    rig.bridge.request_stop()
    rig.bridge.request_stop()  # a second signal changes nothing
    assert not rig.bridge.state().ready().ok
    assert rig.bridge.run() == 0
    assert rig.landed == [1, 2, 3]
    assert rig.acked == [1, 2, 3]
    assert rig.bridge.counters.abandoned == 2
    assert (
        "2 messages left unacked for the broker to redeliver: read but not yet taken at shutdown"
        in caplog.messages
    )
    assert rig.source.closed_with is False, "the last replica ended its session"
    assert rig.spool.closed
    assert rig.writer.closed
    assert beats.forgotten
    assert rig.presence.released
    assert any(line.startswith("bridge stopped: received=3 landed=3") for line in caplog.messages)


def test_a_stop_while_held_keeps_trying_for_the_grace_period_then_leaves_it_unacked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rig = make_rig(spool_max=1)
    rig.writer.down = True
    rig.send(1, 2)
    rig.turn()
    rig.bridge.request_stop()
    stopped_at = rig.clock.now()
    assert rig.bridge.run() == 0
    assert rig.clock.now() - stopped_at == pytest.approx(SHUTDOWN_GRACE_SECONDS, abs=0.2)
    assert rig.acked == []
    assert rig.writer.attempts > 10
    assert rig.bridge.counters.abandoned == 2
    assert (
        "2 messages left unacked for the broker to redeliver: still undelivered at shutdown"
        in caplog.messages
    )


def test_a_hold_that_clears_within_the_grace_period_is_delivered_before_exit() -> None:
    rig = make_rig(spool_max=1)
    rig.writer.fail_next(PublishFailed(UNREACHABLE), times=4)
    rig.send(1, 2)
    rig.turn()
    rig.bridge.request_stop()
    assert rig.bridge.run() == 0
    assert rig.acked == [1, 2]
    assert rig.bridge.counters.abandoned == 0


def test_a_replica_stopping_beside_others_takes_all_it_was_sent_then_ends_its_session() -> None:
    rig = make_rig(batch_linger_ms=1000)
    rig.presence.others_in_group = True
    rig.send(1, 2)
    rig.turn()
    rig.send(3, 4)  # queued for this session before it unsubscribed
    rig.bridge.request_stop()
    assert rig.bridge.run() == 0
    assert rig.source.leaving
    assert rig.acked == [1, 2, 3, 4]
    assert rig.source.closed_with is True
    assert rig.bridge.state().leaving


def test_a_leaving_replica_takes_its_share_even_while_paused() -> None:
    rig = make_rig(high_watermark=10, low_watermark=5)
    rig.presence.others_in_group = True
    rig.writer.extra_depth[QUEUE] = 20
    rig.send(1)
    rig.turn()
    assert rig.backpressure.paused
    rig.send(2, 3)
    rig.bridge.request_stop()
    assert rig.bridge.run() == 0
    assert rig.acked == [1, 2, 3]
    assert rig.source.closed_with is True


def test_a_leaving_replica_that_cannot_deliver_keeps_its_session() -> None:
    rig = make_rig(spool_max=1)
    rig.presence.others_in_group = True
    rig.writer.down = True
    rig.send(1, 2)
    rig.bridge.request_stop()
    assert rig.bridge.run() == 0
    assert rig.acked == []
    assert rig.source.closed_with is False, "ended a session that still holds messages"


def test_a_replica_disconnected_at_the_stop_does_not_leave_its_group() -> None:
    rig = make_rig()
    rig.presence.others_in_group = True
    rig.source.reconnects = False
    rig.source.drop_connection()
    rig.bridge.request_stop()
    assert rig.bridge.run() == 0
    assert not rig.source.leaving
    assert not rig.presence.left_group


# Tracing: the span per message (bridge/message_spans.py).


def traced_rig(**settings: Any) -> tuple[Rig, InMemorySpanExporter]:
    provider, exporter = private_provider()
    rig = make_rig(spans=lambda clock: MessageSpans(ROUTES, provider, clock), **settings)
    return rig, exporter


def headers_of(task_body: str) -> dict[str, Any]:
    return dict(json.loads(task_body)["headers"])


def seconds(nanoseconds: int | None) -> float:
    assert nanoseconds is not None
    return nanoseconds / 1e9


def test_a_traced_message_span_runs_from_its_read_to_its_landing_under_the_publishers_trace() -> (
    None
):
    rig, exporter = traced_rig(batch_linger_ms=50)
    read_at = rig.clock.wall()
    rig.send(1, trace={TRACEPARENT: PUBLISHER_TRACEPARENT, TRACESTATE: PUBLISHER_TRACESTATE})
    rig.turn()  # read and taken; the batch lingers
    rig.wait(0.06)
    assert exporter.get_finished_spans() == (), "ended before the message landed"
    rig.turn()
    assert rig.landed == [1]
    (span,) = exporter.get_finished_spans()
    assert span.parent is not None
    assert (span.parent.trace_id, span.parent.span_id) == (PUBLISHER_TRACE_ID, PUBLISHER_SPAN_ID)
    assert span.kind is SpanKind.CONSUMER
    assert span.name == "process sensors/{device}/readings"
    assert seconds(span.start_time) == pytest.approx(read_at, abs=1e-6)
    assert seconds(span.end_time) == pytest.approx(read_at + 0.06, abs=1e-6)
    assert span.status.status_code is StatusCode.UNSET
    headers = headers_of(rig.writer.queues[QUEUE][0])
    assert dict(span.attributes or {}) == {
        "messaging.system": "mqtt",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": TOPIC,
        "messaging.destination.template": "sensors/{device}/readings",
        "messaging.message.id": headers["id"],
    }
    # The worker's span will be the bridge span's child, in the publisher's trace.
    carried = Traceparent.parse(headers[TRACEPARENT])
    assert (carried.trace_id, carried.parent_id) == (PUBLISHER_TRACE_ID, span.context.span_id)
    assert headers[TRACESTATE] == PUBLISHER_TRACESTATE


@pytest.mark.parametrize(
    "trace",
    [None, {TRACEPARENT: "00-not-a-trace"}, {TRACEPARENT: f"00-{'0' * 32}-{'1' * 16}-01"}],
    ids=["none", "malformed", "zero trace id"],
)
def test_a_message_without_a_usable_trace_context_starts_a_trace(
    trace: dict[str, str] | None,
) -> None:
    rig, exporter = traced_rig()
    rig.send(1, trace=trace)
    rig.turn()
    (span,) = exporter.get_finished_spans()
    assert span.parent is None
    carried = Traceparent.parse(headers_of(rig.writer.queues[QUEUE][0])[TRACEPARENT])
    assert (carried.trace_id, carried.parent_id) == (span.context.trace_id, span.context.span_id)
    assert TRACESTATE not in headers_of(rig.writer.queues[QUEUE][0])


def test_a_dead_lettered_message_span_ends_in_error_named_by_its_reason() -> None:
    rig, exporter = traced_rig()
    rig.source.send(TOPIC, b"not json")
    rig.source.send("elsewhere/x", b"{}")
    rig.turn()
    assert rig.bridge.counters.dead_lettered == 2
    bad_json, no_route = exporter.get_finished_spans()
    assert bad_json.name == "process sensors/{device}/readings"
    assert no_route.name == "process"
    for span, reason in ((bad_json, "invalid_json"), (no_route, "no_route")):
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == reason
        assert (span.attributes or {})["error.type"] == reason
        assert "messaging.message.id" not in (span.attributes or {})


def test_a_spooled_message_span_ends_when_the_spool_holds_it() -> None:
    rig, exporter = traced_rig()
    rig.writer.down = True
    rig.send(1)
    rig.turn()
    assert len(rig.spool) == 1
    (span,) = exporter.get_finished_spans()
    assert (span.attributes or {})[SPOOLED] is True


def test_spans_of_messages_left_unacked_end_in_error_and_their_redelivery_is_traced_anew() -> None:
    rig, exporter = traced_rig(batch_linger_ms=1000)
    rig.send(1, 2, 3, trace={TRACEPARENT: PUBLISHER_TRACEPARENT})
    rig.turn()
    rig.source.drop_connection()
    rig.turn()
    rig.wait(1.0)
    rig.turn()  # the stale three are dropped
    abandoned = exporter.get_finished_spans()
    assert [span.status.status_code for span in abandoned] == [StatusCode.ERROR] * 3
    assert {span.status.description for span in abandoned} == {ABANDONED}
    rig.wait(1.0)
    rig.turn()
    assert rig.landed == [1, 2, 3]
    landed = exporter.get_finished_spans()[3:]
    assert [span.status.status_code for span in landed] == [StatusCode.UNSET] * 3
    assert all(span.parent is not None for span in landed)


def test_the_spans_of_messages_in_hand_at_a_shutdown_cut_short_are_ended() -> None:
    rig, exporter = traced_rig()
    rig.writer.down = True
    rig.spool.broken = True
    rig.send(1)
    rig.turn()  # held: neither Redis nor the spool takes it
    rig.bridge.request_stop()
    rig.wait(SHUTDOWN_GRACE_SECONDS + 1)
    rig.bridge.run()
    (span,) = exporter.get_finished_spans()
    assert span.status.description == ABANDONED


def test_a_task_call_keeps_the_headers_it_has_beside_the_trace_context() -> None:
    provider, _ = private_provider()
    spans = MessageSpans(ROUTES, provider, FakeClock())
    received = Received(RawMessage(TOPIC, reading(1), {}), 1, 1, 1, read_at=START_MONOTONIC)
    call = TaskCall("tests.record", "id-1", QUEUE, ({"n": 1},), {}, headers={"reply": "x"})
    _, traced = spans.start(received, call)
    assert isinstance(traced, TaskCall)
    assert set(traced.headers or {}) == {"reply", TRACEPARENT}
    assert call.headers == {"reply": "x"}, "the judged call was changed in place"


def test_with_tracing_off_a_message_trace_context_goes_nowhere() -> None:
    rig = make_rig()
    rig.send(1, trace={TRACEPARENT: PUBLISHER_TRACEPARENT})
    rig.turn()
    assert rig.landed == [1]
    assert not {TRACEPARENT, TRACESTATE} & set(headers_of(rig.writer.queues[QUEUE][0]))
