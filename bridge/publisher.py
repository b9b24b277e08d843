"""Landing outbound items in Redis in one transaction: task messages onto their queues, dead
letters onto their stream (a refused request's reply beside its letter, on the reply outbox).
The whole batch lands or none of it does, so the caller acks all or nothing. The same
transaction reports every route queue's depth, for backpressure at no extra cost; Redis's memory
is read on request, outside any transaction, so it can be read at maxmemory too.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import redis

from bridge.backpressure import Memory
from bridge.outbound import Outbound, OutboundKind
from taskhub.deadletters import DEFAULT_MAXLEN as DEFAULT_STREAM_MAXLEN
from taskhub.deadletters import add_letter
from taskhub.ledger import LedgerEntry, LedgerKeys, enqueue
from taskhub.replies import add_reply

SOCKET_TIMEOUT = 5.0
CONNECT_TIMEOUT = 1.0
"""Short: while Redis is unreachable, each probe blocks the bridge's loop this long at most."""


class PublishFailed(Exception):
    """Redis did not take the batch; nothing of it is known to have landed."""


class RedisFull(PublishFailed):
    """Redis is at maxmemory (noeviction) and refused the batch; nothing of it landed."""


class RedisPublisher:
    def __init__(
        self,
        broker_url: str,
        queues: Sequence[str],
        ledger: LedgerKeys,
        *,
        deadletter_maxlen: int = DEFAULT_STREAM_MAXLEN,
        outbox_maxlen: int = DEFAULT_STREAM_MAXLEN,
    ) -> None:
        self.redis = redis.Redis.from_url(
            broker_url,
            socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=CONNECT_TIMEOUT,
            health_check_interval=30,
        )
        self.queues = tuple(queues)
        self.ledger = ledger
        self.deadletter_maxlen = deadletter_maxlen
        self.outbox_maxlen = outbox_maxlen
        self.letter_ids: list[str] = []
        """The stream entry ids of the dead letters the last `land` wrote, in their order."""
        self.repeated = 0
        """Tasks landed whose id the ledger already held: MQTT redeliveries of a landed message
        (or a spool chunk drained twice), absorbed downstream by the tasks' idempotency."""

    def land(self, items: Sequence[Outbound]) -> dict[str, int]:
        """Land every item, or raise PublishFailed having landed none; returns queue depths.

        Each task is recorded in the ledger in the same transaction, so none can vanish unseen.
        """
        pipe = self.redis.pipeline(transaction=True)
        tasks = [
            LedgerEntry(item.task_id, item.key, item.body)
            for item in items
            if item.kind is OutboundKind.TASK
        ]
        enqueue(pipe, self.ledger, tasks, time.time())
        letter_slots: list[int] = []
        for item in items:
            if item.kind is OutboundKind.DEAD_LETTER:
                letter_slots.append(len(pipe))  # where this XADD's entry id will be in the reply
                add_letter(pipe, item.key, item.stream_fields(), self.deadletter_maxlen)
            elif item.kind is OutboundKind.REPLY:
                add_reply(pipe, item.key, item.stream_fields(), self.outbox_maxlen)
        for queue in self.queues:
            pipe.llen(queue)
        try:
            results = pipe.execute()
        except redis.exceptions.OutOfMemoryError as error:
            raise RedisFull(f"{type(error).__name__}: {error}") from error
        except redis.RedisError as error:
            raise PublishFailed(f"{type(error).__name__}: {error}") from error
        if tasks:  # the ledger's ZADD NX (enqueue's second command) counts the task ids new to it
            self.repeated += len(tasks) - int(results[1])
        # XADD's entry ids, as bytes: this client does not decode replies.
        self.letter_ids = [results[slot].decode() for slot in letter_slots]
        return dict(zip(self.queues, results[len(results) - len(self.queues) :], strict=True))

    def depths(self) -> dict[str, int]:
        """Every route queue's depth, or PublishFailed.

        Not in a transaction: at maxmemory Redis refuses every command inside MULTI, reads too.
        """
        pipe = self.redis.pipeline(transaction=False)
        for queue in self.queues:
            pipe.llen(queue)
        try:
            return dict(zip(self.queues, pipe.execute(), strict=True))
        except redis.RedisError as error:
            raise PublishFailed(f"{type(error).__name__}: {error}") from error

    def memory(self) -> Memory:
        """Redis's used memory and maxmemory, or PublishFailed."""
        try:
            info = self.redis.info("memory")
        except redis.RedisError as error:
            raise PublishFailed(f"{type(error).__name__}: {error}") from error
        return Memory(used=int(info["used_memory"]), limit=int(info["maxmemory"]))

    def close(self) -> None:
        self.redis.close()
