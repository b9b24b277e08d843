"""Publishing the reply outbox: replies that workers (and the bridge itself, for refused requests)
added to a Redis stream go out over the bridge's own MQTT connection, QoS 1, with their MQTT 5
properties, and each entry is deleted only once the broker's PUBACK for it came.

Every bridge replica reads the stream in one consumer group, so each reply goes to one replica;
entries a replica read and never settled (it died) are claimed back by a live one after
CLAIM_IDLE_SECONDS, or published again at once by the same replica when it restarts (its client
id names its consumer). Delivery is at least once: a reply whose PUBACK was lost with a replica is
published again, and requesters match replies by Correlation Data. Replies need MQTT 5: a bridge
on MQTT 3.1.1 reads no Response Topics and builds no outbox reader (docs/requests.md).

Called from the loop's own thread; reads Redis at most every POLL_SECONDS, never blocking.
"""

from __future__ import annotations

import logging
from typing import Any

import redis

from bridge.backoff import Backoff
from bridge.clock import SYSTEM_CLOCK, Clock
from bridge.ports import MessageSource
from taskhub import redis_keys
from taskhub.replies import Reply
from taskhub.response_topics import ResponseTopics

log = logging.getLogger("taskhub.bridge.replies")

GROUP = "bridges"
"""The outbox's consumer group: every replica reads as a consumer named by its client id."""
POLL_SECONDS = 0.05
"""How often the outbox is read while replies may be waiting."""
MAX_IN_FLIGHT = 100
"""Replies published and waiting for their PUBACK, at most; also the most read at once."""
CLAIM_EVERY_SECONDS = 5.0
CLAIM_IDLE_SECONDS = 30.0
"""An entry read this long ago and still not settled belongs to a replica that died: claim it."""
RETRY_MIN_SECONDS = 0.5
RETRY_MAX_SECONDS = 10.0


class ReplyOutbox:
    """Reads the outbox, publishes each reply through `source`, settles (XACK + XDEL) those the
    broker acknowledged."""

    def __init__(
        self,
        client: redis.Redis,
        key_prefix: str,
        consumer: str,
        source: MessageSource,
        response_topics: ResponseTopics,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.redis = client
        self.stream = redis_keys.reply_outbox(key_prefix)
        self.consumer = consumer
        self.source = source
        self.response_topics = response_topics
        self.clock = clock
        self.published = 0
        """Replies the broker acknowledged (the `taskhub_bridge_replies_published` counter)."""
        self.in_flight: dict[int, str] = {}
        """Packet id -> outbox entry id, for replies published and not yet acknowledged."""
        self._settled: list[str] = []
        """Entry ids to XACK and XDEL: acknowledged, or malformed."""
        self._group_ready = False
        self._own_cursor: str | None = "0-0"
        """Where re-reading this consumer's pending entries has got to; None once done."""
        self._claim_cursor = "0-0"
        self._next_read = 0.0
        self._next_claim = clock.now() + CLAIM_EVERY_SECONDS
        self._backoff = Backoff(RETRY_MIN_SECONDS, RETRY_MAX_SECONDS, clock)
        self._failure: str | None = None

    def turn(self, *, reading: bool = True) -> None:
        """Collect the PUBACKs that came, and at most every POLL_SECONDS settle them in Redis and,
        if `reading` and connected, publish what waits in the outbox (bounded by MAX_IN_FLIGHT)."""
        for mid in self.source.completed_replies():
            entry_id = self.in_flight.pop(mid, None)
            if entry_id is not None:
                self._settled.append(entry_id)
                self.published += 1
        now = self.clock.now()
        if now < self._next_read or not self._backoff.ready():
            return
        self._next_read = now + POLL_SECONDS
        try:
            self.settle()
            if reading and self.source.connected:
                self._read(now)
        except redis.RedisError as error:
            self._failed(error)
            return
        if self._failure is not None:
            log.info("the reply outbox is readable again")
            self._failure = None
        self._backoff.succeeded()

    def due_in(self) -> float:
        """Seconds until the outbox is next read: the loop waits for MQTT traffic no longer than
        this, so that a reply a worker added waits at most POLL_SECONDS, not the loop's idle wait
        (0.1 s, which every reply to an idle bridge paid in full)."""
        return max(self._next_read - self.clock.now(), self._backoff.remaining(), 0.0)

    def settle(self) -> None:
        """Delete the entries whose replies are out (or that cannot be read) from the outbox;
        raises redis errors, keeping them to settle later."""
        if not self._settled:
            return
        pipe = self.redis.pipeline(transaction=True)
        pipe.xack(self.stream, GROUP, *self._settled)
        pipe.xdel(self.stream, *self._settled)
        pipe.execute()
        self._settled.clear()

    def _read(self, now: float) -> None:
        room = MAX_IN_FLIGHT - len(self.in_flight)
        if room <= 0:
            return
        self._ensure_group()
        try:
            entries = self._own_pending(room) if self._own_cursor is not None else []
            if now >= self._next_claim and len(entries) < room:
                self._next_claim = now + CLAIM_EVERY_SECONDS
                entries += self._claim(room - len(entries))
            if len(entries) < room:
                entries += self._group_entries(">", room - len(entries))
        except redis.ResponseError as error:
            if "NOGROUP" in str(error):  # the stream was deleted: make the group again
                self._group_ready = False
                return
            raise
        for entry_id, fields in entries:
            self._publish(_text(entry_id), fields)

    def _group_entries(self, cursor: str, count: int) -> list[Any]:
        """XREADGROUP as this consumer: new entries (`>`), or its own pending ones past `cursor`."""
        found: Any = self.redis.xreadgroup(GROUP, self.consumer, {self.stream: cursor}, count=count)
        return [entry for _stream, stream_entries in found or () for entry in stream_entries]

    def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            # From the start: replies added before any bridge made the group are published too.
            self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise
        self._group_ready = True

    def _own_pending(self, count: int) -> list[Any]:
        """Entries this consumer read in an earlier life (killed before their PUBACK): published
        again now, not CLAIM_IDLE_SECONDS later, past its requesters' timeouts. Only at the start:
        later, this consumer's pending entries are its own replies in flight."""
        entries = self._group_entries(self._own_cursor or "0-0", count)
        if len(entries) < count:
            self._own_cursor = None
        else:
            self._own_cursor = _text(entries[-1][0])
        return entries

    def _claim(self, count: int) -> list[Any]:
        """Entries another replica (or this one, before a restart) read and never settled."""
        found = self.redis.xautoclaim(
            self.stream,
            GROUP,
            self.consumer,
            int(CLAIM_IDLE_SECONDS * 1000),
            start_id=self._claim_cursor,
            count=count,
        )
        cursor, claimed = found[0], found[1]
        self._claim_cursor = _text(cursor)
        mine = set(self.in_flight.values())  # published by this replica, PUBACK still to come
        return [(entry_id, fields) for entry_id, fields in claimed if _text(entry_id) not in mine]

    def _publish(self, entry_id: str, fields: Any) -> None:
        try:
            reply = Reply.from_entry(fields or {})
        except (ValueError, TypeError) as error:
            self._drop(entry_id, f"it cannot be read ({type(error).__name__}: {error})")
            return
        refused = self.response_topics.refusal(reply.address.topic)
        if refused is not None:
            self._drop(entry_id, refused)
            return
        mid = self.source.publish_reply(reply)
        if mid is None:  # not connected after all: claimed back after CLAIM_IDLE_SECONDS
            return
        self.in_flight[mid] = entry_id

    def _drop(self, entry_id: str, why: str) -> None:
        log.warning("reply outbox entry %s deleted unpublished: %s", entry_id, why)
        self._settled.append(entry_id)

    def _failed(self, error: redis.RedisError) -> None:
        why = f"{type(error).__name__}: {error}"
        if why != self._failure:
            log.warning("the reply outbox cannot be read: %s (retrying with backoff)", why)
            self._failure = why
        self._backoff.failed()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
