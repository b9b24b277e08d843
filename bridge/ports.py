"""What the bridge's loop needs from each thing outside it (the MQTT session, the Redis writer,
the spool, the replica's records in Redis), as Protocols the real classes satisfy as they are.

The loop's branches (hold, stale drop, spool drain, backpressure, shutdown) are logic; these seams
let in-memory fakes (tests/fakes/) drive every one of them in milliseconds, with a failure injected
at any step, while the real-server tests keep proving the real parts. `build_bridge` passes the
real classes through these types, so mypy checks they still fit. Time is `bridge.clock.Clock`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Sized
from pathlib import Path
from typing import Protocol

from bridge.backpressure import Memory
from bridge.outbound import Outbound
from bridge.source import Received
from bridge.state import BridgeState
from taskhub.replies import Reply


class MessageSource(Protocol):
    """A persistent MQTT session read on the loop's own thread (`bridge.source.MqttSource`).

    Acks given on one connection only count on it: a message read on an earlier connection is
    never acked (the broker redelivers it), so `is_current` says whether acking it still counts.
    """

    @property
    def received(self) -> Sized:
        """Messages read and not yet taken."""
        ...

    @property
    def connected(self) -> bool: ...

    @property
    def subscribed(self) -> bool: ...

    @property
    def subscribe_refused(self) -> Sequence[str]: ...

    def pump(self, timeout: float) -> None:
        """Service the connection once, waiting at most `timeout` seconds for traffic."""
        ...

    def take(self, limit: int) -> list[Received]:
        """Up to `limit` received messages, oldest first."""
        ...

    def more_waiting(self) -> bool: ...

    def is_current(self, received: Received) -> bool:
        """Whether `received` came on the live connection (so acking it counts)."""
        ...

    def ack(self, batch: list[Received]) -> None:
        """Ack `batch` in order, skipping messages whose connection is gone."""
        ...

    def publish(self, topic: str, payload: str) -> None: ...

    def publish_reply(self, reply: Reply) -> int | None:
        """Publish a reply (QoS 1, MQTT 5 properties); its packet id, or None if not connected."""
        ...

    def completed_replies(self) -> list[int]:
        """Packet ids of the replies the broker acknowledged since the last call."""
        ...

    def shed_and_drained(self) -> bool: ...

    def reconnect_to_collect_shed(self) -> None: ...

    def leave(self) -> None:
        """Unsubscribe for good: a replica leaving its share group."""
        ...

    def drained(self) -> bool:
        """Whether a leaving replica's session holds nothing more for it."""
        ...

    def close(self, *, end_session: bool = False) -> None: ...


class RedisWriter(Protocol):
    """Lands whole batches in Redis, or raises `bridge.publisher.PublishFailed` (`RedisFull` when
    Redis is at maxmemory) having landed none (`bridge.publisher.RedisPublisher`)."""

    @property
    def letter_ids(self) -> Sequence[str]:
        """The stream entry ids of the dead letters the last `land` wrote, in order."""
        ...

    @property
    def repeated(self) -> int:
        """Tasks landed whose id the ledger already held."""
        ...

    def land(self, items: Sequence[Outbound]) -> Mapping[str, int]:
        """Land every item or none; returns each route queue's depth."""
        ...

    def depths(self) -> Mapping[str, int]: ...

    def memory(self) -> Memory: ...

    def close(self) -> None: ...


class Spooler(Protocol):
    """The durable overflow for batches Redis cannot take (`bridge.spool.Spool`): `append`
    raises `SpoolFull` or `SpoolFailed` having stored nothing; reads raise `SpoolFailed`."""

    @property
    def path(self) -> Path: ...

    @property
    def max_messages(self) -> int: ...

    def __len__(self) -> int: ...

    def append(self, items: Sequence[Outbound]) -> None: ...

    def oldest(self, limit: int) -> tuple[int, list[Outbound]]:
        """Up to `limit` items, oldest first, and the sequence number of the last one."""
        ...

    def remove_through(self, seq: int) -> None:
        """Forget every item up to and including `seq`: Redis holds them now."""
        ...

    def close(self) -> None: ...


class Presence(Protocol):
    """This replica's lease on its client id and its share-group place
    (`bridge.replicas.Replica`); `beat` raises `ClientIdTaken` if another bridge took the id."""

    @property
    def client_id(self) -> str: ...

    def claim(self) -> None: ...

    def beat(self) -> None: ...

    def leave_group_if_others_remain(self) -> bool: ...

    def release(self) -> None: ...


class LedgerSweep(Protocol):
    """Re-enqueues tasks a worker lost (`bridge.sweeper.Sweeper`); `sweep` raises redis errors."""

    @property
    def requeued(self) -> int: ...

    def sweep(self) -> int: ...


class ReplyPublisher(Protocol):
    """Publishes the reply outbox over the source's connection (`bridge.replies.ReplyOutbox`)."""

    @property
    def published(self) -> int:
        """Replies the broker acknowledged."""
        ...

    def turn(self, *, reading: bool = True) -> None:
        """Settle acknowledged replies; publish waiting ones if `reading`. Raises nothing."""
        ...

    def due_in(self) -> float:
        """Seconds until `turn` next reads the outbox: the longest the loop may wait for MQTT."""
        ...

    def settle(self) -> None:
        """Delete the acknowledged replies' entries now; raises redis errors."""
        ...


class StateRecorder(Protocol):
    """Records the bridge's state for `taskhub status` (`bridge.state.StateBeats`)."""

    @property
    def failure(self) -> str | None:
        """Why the last record failed, or None."""
        ...

    def due(self) -> bool: ...

    def record(self, state: BridgeState) -> None: ...

    def forget(self) -> None: ...
