"""The bridge's own records in Redis, in memory: its client-id lease and share-group place
(`Presence`), the ledger sweep (`LedgerSweep`) and the state beats (`StateRecorder`)."""

from __future__ import annotations

import redis

from bridge.replicas import ClientIdTaken
from bridge.state import BridgeState


class FakePresence:
    def __init__(self, client_id: str = "bridge-test") -> None:
        self.client_id = client_id
        self.others_in_group = False
        """Whether another live replica shares the group (so a stopping one may leave)."""
        self.taken_by: str | None = None
        """Another bridge that took the client id: the next beat says so."""
        self.claimed = False
        self.beats = 0
        self.left_group = False
        self.released = False

    def claim(self) -> None:
        self.claimed = True

    def beat(self) -> None:
        self.beats += 1
        if self.taken_by is not None:
            raise ClientIdTaken(self.taken_by)

    def leave_group_if_others_remain(self) -> bool:
        self.left_group = self.others_in_group
        return self.left_group

    def release(self) -> None:
        self.released = True


class FakeSweep:
    def __init__(self) -> None:
        self.requeued = 0
        self.sweeps = 0
        self.error: redis.RedisError | None = None
        """Raised by every sweep while set."""

    def sweep(self) -> int:
        self.sweeps += 1
        if self.error is not None:
            raise self.error
        return 0


class FakeBeats:
    def __init__(self) -> None:
        self.failure: str | None = None
        self.recorded: list[BridgeState] = []
        self.forgotten = False

    def due(self) -> bool:
        return True

    def record(self, state: BridgeState) -> None:
        self.recorded.append(state)

    def forget(self) -> None:
        self.forgotten = True
