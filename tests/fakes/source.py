"""An MQTT persistent session in memory, as the bridge's loop sees it through `MessageSource`.

The broker side keeps what it sends until it is acked on the connection it came on; when a
connection ends, every unacked message is sent again on the next one, as a QoS 1 session does.
So a test can lose a connection at any step and count what the broker would redeliver.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypedDict, Unpack

from bridge.source import Received
from taskhub.intake import RawMessage
from taskhub.replies import Reply, ReplyAddress
from tests.fakes.clock import FakeClock


class PropertiesRead(TypedDict, total=False):
    """What the real source reads from a message's MQTT 5 properties."""

    sent_at: float | None
    reply: ReplyAddress | None
    trace: Mapping[str, str] | None


@dataclass(frozen=True, slots=True)
class Queued:
    """A message the broker holds for the session."""

    message: RawMessage
    qos: int = 1
    retained_replay: bool = False
    sent_at: float | None = None


class FakeSource:
    def __init__(
        self, clock: FakeClock, *, read_ahead: int | None = None, per_pump: int | None = None
    ) -> None:
        self.clock = clock
        self.read_ahead = read_ahead
        """Past this many read and not taken, messages are shed unacked (`read_ahead`)."""
        self.per_pump = per_pump
        """Most messages one pump reads; the rest are still on the socket (`more_waiting`)."""
        self.received: deque[Received] = deque()
        self.connected = True
        self.subscribed = True
        self.subscribe_refused: list[str] = []
        self.connection = 1
        self.queued: deque[Queued] = deque()
        """At the broker, not yet sent on this connection."""
        self.in_flight: dict[int, Queued] = {}
        """Sent on the current connection and not acked, by packet id."""
        self.acked: list[bytes] = []
        """Payloads acked, in ack order."""
        self.ack_calls = 0
        self.published: list[tuple[str, str]] = []
        self.pump_timeouts: list[float] = []
        self.taken = 0
        self.shed = 0
        self.collect_reconnects = 0
        self.leaving = False
        self.unsubscribed = False
        self.closed_with: bool | None = None
        """`end_session` of the close() call, or None before one."""
        self.reconnects = True
        """Whether a pump reconnects a lost connection (False: the broker stays away)."""
        self.ack_error: Exception | None = None
        """Raised by the next ack() (then cleared): the write of the acks failed."""
        self.before_ack: Callable[[], None] | None = None
        """Run by the next ack() before it acks anything (then cleared): a step to inject there."""
        self._mids = itertools.count(1)
        self.replies: dict[int, Reply] = {}
        """Replies published and not yet acknowledged by the broker, by packet id."""
        self.replies_acked: list[int] = []

    def puback_replies(self) -> None:
        """The broker acknowledges every reply published so far."""
        self.replies_acked += list(self.replies)
        self.replies.clear()

    # What a test does as the broker.

    def send(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retained_replay: bool = False,
        **read: Unpack[PropertiesRead],
    ) -> None:
        """The broker has a message for the session; the next pump reads it, with `read` as the
        real source reads it from the message's properties."""
        message = RawMessage(topic, payload, {}, read.get("reply"), read.get("trace"))
        self.queued.append(Queued(message, qos, retained_replay, read.get("sent_at")))

    def drop_connection(self) -> None:
        """The connection ends: what was read stays read (and stale); unacked messages wait at
        the broker to be sent again, first, on the next connection."""
        self.connected = False
        self.subscribed = False
        resent = [self.in_flight[mid] for mid in sorted(self.in_flight)]
        self.in_flight.clear()
        self.queued.extendleft(reversed(resent))

    # MessageSource.

    def pump(self, timeout: float) -> None:
        self.pump_timeouts.append(timeout)
        if not self.connected:
            if not self.reconnects:
                self.clock.advance(timeout)
                return
            self.connection += 1
            self.connected = True
            self.subscribed = not self.leaving
            self.unsubscribed = self.leaving
            self.shed = 0
        if not self.queued:
            self.clock.advance(timeout)  # the wait for traffic that does not come
            return
        for _ in range(min(len(self.queued), self.per_pump or len(self.queued))):
            queued = self.queued.popleft()
            mid = next(self._mids)
            if queued.qos > 0:
                self.in_flight[mid] = queued
            if self._shedding():
                continue
            self.received.append(
                Received(
                    queued.message,
                    mid,
                    queued.qos,
                    self.connection,
                    queued.retained_replay,
                    self.clock.now(),
                    queued.sent_at,
                )
            )

    def _shedding(self) -> bool:
        if self.read_ahead is None:
            return False
        if self.shed or len(self.received) >= self.read_ahead:
            self.shed += 1
        return self.shed > 0

    def take(self, limit: int) -> list[Received]:
        count = min(limit, len(self.received))
        self.taken += count
        return [self.received.popleft() for _ in range(count)]

    def more_waiting(self) -> bool:
        return bool(self.received) or (self.connected and bool(self.queued))

    def is_current(self, received: Received) -> bool:
        return self.connected and received.connection == self.connection

    def ack(self, batch: list[Received]) -> None:
        self.ack_calls += 1
        if self.before_ack is not None:
            step, self.before_ack = self.before_ack, None
            step()
        if self.ack_error is not None:
            error, self.ack_error = self.ack_error, None
            raise error
        for received in batch:
            if received.qos > 0 and self.is_current(received):
                del self.in_flight[received.mid]
                self.acked.append(received.message.payload)

    def publish(self, topic: str, payload: str) -> None:
        if self.connected:
            self.published.append((topic, payload))

    def publish_reply(self, reply: Reply) -> int | None:
        if not self.connected:
            return None
        mid = next(self._mids)
        self.replies[mid] = reply
        return mid

    def completed_replies(self) -> list[int]:
        acked, self.replies_acked = self.replies_acked, []
        return acked

    def shed_and_drained(self) -> bool:
        return self.connected and self.shed > 0 and not self.received

    def reconnect_to_collect_shed(self) -> None:
        self.collect_reconnects += 1
        self.drop_connection()

    def leave(self) -> None:
        self.leaving = True
        if self.connected:
            self.unsubscribed = True
            self.subscribed = False

    def drained(self) -> bool:
        return self.connected and self.unsubscribed and not self.received and not self.queued

    def close(self, *, end_session: bool = False) -> None:
        self.closed_with = end_session
        self.connected = False
