"""The bridge's loop: read MQTT while there is room, judge each message once, deliver batches to
Redis (or the spool), and ack each batch in arrival order only once it is durable.

Reading pauses when too much is in flight, when queues pass the high watermark, or when neither
Redis nor the spool can take a batch; the MQTT broker holds the rest meanwhile.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, replace
from operator import attrgetter
from typing import TYPE_CHECKING

import redis

from bridge.backoff import Backoff
from bridge.clock import SYSTEM_CLOCK, Clock
from bridge.delivery import Delivery, Outcome
from bridge.metrics import BatchMetrics
from bridge.outbound import Outbound
from bridge.ports import LedgerSweep, MessageSource, Presence, ReplyPublisher, StateRecorder
from bridge.publish_time import from_payload
from bridge.replicas import ClientIdTaken
from bridge.source import Received
from bridge.state import BridgeState
from taskhub import redis_keys, tracing
from taskhub.deadletters import DeadLetter
from taskhub.intake import Intake
from taskhub.settings import BridgeSettings
from taskhub.task_messages import MessageBuilder
from taskhub.telemetry.deadletter_log import flush_dead_letter_log, log_dead_letter

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from bridge.message_spans import MessageSpans

log = logging.getLogger("taskhub.bridge")

IDLE_WAIT_SECONDS = 0.1
"""Longest wait for MQTT traffic before the loop looks at its timers and the stop flag."""
BACKPRESSURE_POLL_SECONDS = 0.1
SWEEP_INTERVAL_SECONDS = 5.0
"""How often the ledger is swept for tasks a worker lost between taking and recording them."""
SHUTDOWN_GRACE_SECONDS = 30.0
"""After a stop request, how long to keep trying to deliver the messages in hand."""


@dataclass(slots=True)
class Counters:
    received: int = 0
    landed: int = 0
    spooled: int = 0
    dead_lettered: int = 0
    abandoned: int = 0
    """Given up unacked (connection lost or shutdown); the broker redelivers them."""
    retained_replays: int = 0
    """Retained messages sent again for a re-made subscription: acked, not enqueued again."""

    def line(self) -> str:
        return " ".join(f"{name}={getattr(self, name)}" for name in self.__slots__)


@dataclass(frozen=True, slots=True)
class Pending:
    received: Received
    outbound: Outbound | None
    """None for a message that is acked in its turn and delivered nowhere (a retained replay)."""
    letter: DeadLetter | None = None
    """The dead letter `outbound` carries, if it is one."""
    sent_at: float | None = None
    """The message's own publish time, epoch seconds, where it carries one."""
    reply: Outbound | None = None
    """The REFUSED reply a dead-lettered request gets, landed in the same batch as its letter."""
    span: Span | None = None
    """Its span while tracing is on (bridge/message_spans.py), ended once it is durable."""


_READ_AT = attrgetter("received.read_at")


class Bridge:
    """One replica's loop: `run()` turns it until a stop, then delivers what is in hand.

    Everything outside it comes in through bridge/ports.py and the clock, so tests/fakes/ can
    stand in for each (tests/test_bridge_units.py).
    """

    def __init__(
        self,
        source: MessageSource,
        intake: Intake,
        builder: MessageBuilder,
        delivery: Delivery,
        sweeper: LedgerSweep,
        replica: Presence,
        settings: BridgeSettings,
        key_prefix: str,
        beats: StateRecorder | None = None,
        clock: Clock = SYSTEM_CLOCK,
        replies: ReplyPublisher | None = None,
        spans: MessageSpans | None = None,
    ) -> None:
        """`spans` None: tracing off, and no trace work per message beyond asking."""
        self.source = source
        self.replies = replies
        """Publishes the reply outbox; None on MQTT 3.1.1, which carries no reply properties."""
        self.intake = intake
        self.builder = builder
        self.delivery = delivery
        self.sweeper = sweeper
        self.replica = replica
        self.clock = clock
        self.spans = spans
        self.exit_code = 0
        self._leaving: bool | None = None
        """Decided at the stop: whether this replica leaves its share group for good."""
        self._drained = False
        self.settings = settings
        self.deadletter_key = redis_keys.deadletters(key_prefix)
        self.outbox_key = redis_keys.reply_outbox(key_prefix)
        self.counters = Counters()
        self.pending: deque[Pending] = deque()
        self._stop = threading.Event()
        self._stop_requested_at: float | None = None
        self._batch_started: float | None = None
        self._hold = Backoff(settings.redis_retry_min_delay, settings.redis_retry_max_delay, clock)
        self._next_depth_poll = 0.0
        self._next_sweep = clock.now() + SWEEP_INTERVAL_SECONDS
        self.beats = beats
        self.batches = BatchMetrics()
        self.turned_at = clock.now()
        """When the loop last turned: `/healthz` reads it from the probe thread."""

    def request_stop(self) -> None:
        """Stop reading; deliver and ack what is in hand; then run() returns."""
        if not self._stop.is_set():
            self._stop_requested_at = self.clock.now()
            self._stop.set()

    def run(self) -> int:
        """Run until stopped; the process's exit code."""
        try:
            while not self._finished():
                self.turn()
        finally:
            # A session ends only with nothing unacked or queued in it: those would end with it.
            left_clean = self._drained and not self.pending and not self.source.received
            self._abandon(len(self.pending), "still undelivered at shutdown")
            self._abandon_spans(self.pending)
            self._abandon(len(self.source.received), "read but not yet taken at shutdown")
            self.pending.clear()
            self.source.close(end_session=bool(self._leaving) and left_clean)
            self._settle_replies()
            self.delivery.spool.close()
            self.delivery.publisher.close()
            log.info(
                "bridge stopped: %s drained=%d spool=%d swept_again=%d",
                self.counters.line(),
                self.delivery.drained,
                len(self.delivery.spool),
                self.sweeper.requeued,
            )
            if self.beats is not None:
                self.beats.forget()
            self.replica.release()
        return self.exit_code

    def state(self) -> BridgeState:
        """This replica as probes, metrics and beats show it; safe to call from another thread
        (it only reads, and a momentarily stale figure is fine there)."""
        pending = len(self.pending)
        backpressure = self.delivery.backpressure
        paused = tuple(
            reason
            for reason, on in (
                ("queues_full", backpressure.queues_full),
                ("memory_full", backpressure.memory_full),
            )
            if on
        )
        beat_failure = self.beats.failure if self.beats is not None else None
        return BridgeState(
            connected=self.source.connected,
            subscribed=self.source.subscribed,
            subscribe_refused=tuple(self.source.subscribe_refused),
            in_flight=pending + len(self.source.received),
            held=min(pending, self.settings.batch_size) if self._hold.failures else 0,
            paused=paused,
            spool_depth=len(self.delivery.spool),
            redis_fault=self.delivery.redis_fault or beat_failure,
            spool_fault=self.delivery.spool_fault,
            leaving=bool(self._leaving),
            stopping=self._stop.is_set(),
            loop_age=self.clock.now() - self.turned_at,
        )

    def counts(self) -> dict[str, int]:
        """The counters `/metrics` shows."""
        counters = self.counters
        return {
            "received": counters.received,
            "landed": counters.landed,
            "spooled": counters.spooled,
            "abandoned": counters.abandoned,
            "duplicates": counters.retained_replays + self.delivery.publisher.repeated,
            "replies_published": self.replies.published if self.replies is not None else 0,
        }

    def _finished(self) -> bool:
        if not self._stop.is_set():
            return False
        if self._shutdown_overdue():
            return True
        if self._leaving is None:
            self._leaving = self._leave_group()
        if self._leaving:  # everything the broker sent or queued for this session is delivered
            self._drained = not self.pending and self.source.drained()
            return self._drained
        return not self.pending

    def _leave_group(self) -> bool:
        """At a stop: leave the share group for good if another live replica remains in it, so
        the broker sends this replica's share there instead of queueing it for a session that
        may never come back (a scale-down). The last replica keeps its session and its share."""
        if not self.source.connected or not self.replica.leave_group_if_others_remain():
            return False
        log.info("leaving the share group: the other replicas take this one's share from now on")
        self.source.leave()
        return True

    def turn(self) -> None:
        """One pass of the loop: read, take, deliver and ack a batch if one is due, drain the
        spool, and the timers (depth poll, heartbeat, state beat, sweep)."""
        now = self.clock.now
        self.turned_at = now()
        held = not self._hold.ready()
        # A leaving replica takes everything it was sent, even while paused: bounded by what
        # was in flight when it unsubscribed.
        reading_on = not self._stop.is_set() and not self.delivery.backpressure.paused
        taking = (reading_on or bool(self._leaving)) and not held
        busy = bool(self.pending) and not held
        self.source.pump(timeout=0 if busy else self._idle_wait())
        if taking:
            self._take_received(self.settings.max_in_flight - len(self.pending))
        if self.pending and not held and self._batch_due():
            self._flush()
        if not self.pending and self.source.shed_and_drained():
            self.source.reconnect_to_collect_shed()
        self.delivery.drain_spool()
        if self.replies is not None and self.delivery.redis_due:
            self.replies.turn(reading=not self._stop.is_set())
        if self.delivery.backpressure.paused and now() >= self._next_depth_poll:
            self._next_depth_poll = now() + BACKPRESSURE_POLL_SECONDS
            self.delivery.poll_depths()
        self._beat()
        if self.beats is not None and self.beats.due():
            flush_dead_letter_log()  # a flood's summary line, even once the flood is over
            if self.delivery.redis_due:  # not while Redis is known down: no wait on it
                self.beats.record(self.state())
        if now() >= self._next_sweep:
            self._next_sweep = now() + SWEEP_INTERVAL_SECONDS
            self._sweep()

    def _idle_wait(self) -> float:
        """How long to wait for MQTT traffic with nothing in hand: until the reply outbox is due,
        when it will be read (not while Redis or MQTT is down: the loop would spin)."""
        if self.replies is None or not self.source.connected or not self.delivery.redis_due:
            return IDLE_WAIT_SECONDS
        return min(IDLE_WAIT_SECONDS, self.replies.due_in())

    def _settle_replies(self) -> None:
        """At shutdown, delete the entries of replies acknowledged while closing, rather than have
        another replica claim and publish them again."""
        if self.replies is None:
            return
        self.replies.turn(reading=False)
        try:
            self.replies.settle()
        except redis.RedisError as error:
            log.warning("replies published but left in the outbox (sent again later): %s", error)

    def _beat(self) -> None:
        try:
            self.replica.beat()
        except ClientIdTaken as taken:
            if not self._stop.is_set():
                log.error("%s; stopping", client_id_taken(self.replica.client_id, str(taken)))
                self.exit_code = 1
                self.request_stop()

    def _sweep(self) -> None:
        if len(self.delivery.spool) or not self.delivery.redis_due:
            return  # Redis is down or catching up; the ledger waits
        try:
            self.sweeper.sweep()
        except redis.RedisError as error:
            log.debug("ledger sweep skipped: %s", error)

    def _take_received(self, room: int) -> None:
        taken = self.source.take(room)
        if taken and self._batch_started is None:
            self._batch_started = self.clock.now()
        self.counters.received += len(taken)
        for message in taken:
            self.pending.append(self._pending(message))

    def _pending(self, received: Received) -> Pending:
        if received.retained_replay:
            return Pending(received, None)
        verdict = self.intake.judge(received.message)
        span = None
        if self.spans is not None:
            span, verdict = self.spans.start(received, verdict)
        if isinstance(verdict, DeadLetter):
            outbound = Outbound.dead_letter(verdict, self.deadletter_key)
            return Pending(
                received,
                outbound,
                verdict,
                received.sent_at,
                reply=self._refusal_reply(received, verdict, span),
                span=span,
            )
        sent_at = received.sent_at  # the MQTT 5 user property first, else the payload's field
        if sent_at is None:
            sent_at = from_payload(verdict.args[0])
        return Pending(received, Outbound.task(verdict, self.builder), None, sent_at, span=span)

    def _refusal_reply(
        self, received: Received, letter: DeadLetter, span: Span | None
    ) -> Outbound | None:
        if received.message.reply is None:  # the common case: not a request
            return None
        reply = self.intake.refusal_reply(received.message, letter)
        if reply is None:
            return None
        if span is not None:  # the requester can continue the trace from the bridge's span
            reply = replace(reply, user_properties=tracing.reply_properties(span))
        return Outbound.reply(reply, self.outbox_key)

    def _batch_due(self) -> bool:
        if len(self.pending) >= self.settings.batch_size or self._stop.is_set():
            return True
        if self.source.more_waiting():
            return False
        lingered = self.clock.now() - (self._batch_started or 0.0)
        return lingered * 1000 >= self.settings.batch_linger_ms

    def _flush(self) -> None:
        batch = [self.pending[i] for i in range(min(self.settings.batch_size, len(self.pending)))]
        stale = [item for item in batch if not self.source.is_current(item.received)]
        if stale:
            # Their connection is gone: the broker redelivers them, so delivering them now would
            # only make duplicates. Drop everything from that connection.
            self._drop_stale()
            return
        delivered = [item for item in batch if item.outbound is not None]
        outbound = [item.outbound for item in delivered if item.outbound is not None]
        # Refused requests' replies land in the same transaction (or spool write) as their letters.
        replies = [item.reply for item in delivered if item.reply is not None]
        outcome = self.delivery.deliver(outbound + replies)[0] if outbound else Outcome.LANDED
        if outcome is Outcome.HELD:
            self._hold_batch()
            return
        self._hold.succeeded()
        self.source.ack([item.received for item in batch])
        for _ in batch:
            self.pending.popleft()
        letters = [
            (item.letter, item.outbound)
            for item in delivered
            if item.letter is not None and item.outbound is not None
        ]
        # Landed: the publisher has their stream entry ids, in order. Spooled: none yet.
        entry_ids = self.delivery.publisher.letter_ids if outcome is Outcome.LANDED else []
        for n, (letter, outbound_letter) in enumerate(letters):
            entry_id = entry_ids[n] if n < len(entry_ids) else "(spooled)"
            self._dead_lettered(letter, outbound_letter, entry_id)
        dead = len(letters)
        self.counters.dead_lettered += dead
        self.counters.retained_replays += len(batch) - len(outbound)
        if outcome is Outcome.LANDED:
            self.counters.landed += len(outbound) - dead
        else:
            self.counters.spooled += len(outbound) - dead
        if self.spans is not None:
            spooled = outcome is Outcome.SPOOLED
            self.spans.ended([(item.span, item.letter) for item in delivered], spooled)
        self.batches.landed(
            len(batch),
            map(_READ_AT, delivered),
            [item.sent_at for item in delivered if item.sent_at is not None],
            self.clock.now(),
            self.clock.wall(),
        )
        self._batch_started = self.clock.now() if self.pending else None

    def _dead_lettered(self, letter: DeadLetter, outbound: Outbound, entry_id: str) -> None:
        """A dead letter is durable: count it, log it (rate-limited), and copy it to MQTT."""
        self.batches.deadlettered[letter.reason.value] += 1
        log_dead_letter(letter, entry_id)
        if self.settings.deadletter_topic:  # a copy for MQTT consumers; the stream holds it
            self.source.publish(self.settings.deadletter_topic, outbound.body)

    def _drop_stale(self) -> None:
        kept: deque[Pending] = deque()
        stale: list[Pending] = []
        for item in self.pending:
            (kept if self.source.is_current(item.received) else stale).append(item)
        self._abandon(len(stale), "their mqtt connection was lost")
        self._abandon_spans(stale)
        self.pending = kept
        self._batch_started = self.clock.now() if kept else None

    def _hold_batch(self) -> None:
        """Neither Redis nor the spool took the batch: keep it unacked and try again later."""
        if not self._hold.failures:
            log.error(
                "redis is down and %s: holding %d unacked messages; the mqtt broker keeps the rest",
                self.delivery.held_because,
                len(self.pending),
            )
        self._hold.failed()

    def _abandon_spans(self, items: Iterable[Pending]) -> None:
        if self.spans is not None:
            self.spans.abandoned(item.span for item in items)

    def _shutdown_overdue(self) -> bool:
        started = self._stop_requested_at or self.clock.now()
        return self.clock.now() - started > SHUTDOWN_GRACE_SECONDS

    def _abandon(self, count: int, why: str) -> None:
        """Give up `count` messages unacked: not lost, the broker sends them again."""
        if count:
            self.counters.abandoned += count
            log.warning("%d messages left unacked for the broker to redeliver: %s", count, why)


def client_id_taken(client_id: str, holder: str) -> str:
    """The one line that says two bridges share a client id, and what to do about it."""
    return (
        f"another bridge ({holder}) runs as TASKHUB_MQTT__CLIENT_ID={client_id}: two replicas on "
        "one client id take the MQTT session from each other; give each replica its own id"
    )
