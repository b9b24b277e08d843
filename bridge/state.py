"""The bridge's state as the outside sees it: one snapshot feeds `/healthz`, `/readyz`, the gauges
on `/metrics` and the beat `taskhub status` reads from Redis, so the three never disagree.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass

import redis

from taskhub.telemetry.beats import BridgeBeat, forget_beat, record_beat
from taskhub.telemetry.probes import Verdict

log = logging.getLogger("taskhub.bridge")

HEALTHY_WITHIN_SECONDS = 10.0
"""The loop must have turned this recently for `/healthz` to answer 200."""


@dataclass(frozen=True, slots=True)
class BridgeState:
    connected: bool
    subscribed: bool
    subscribe_refused: tuple[str, ...]
    in_flight: int
    """MQTT messages read and not yet acked."""
    held: int
    """Messages in the batch that neither Redis nor the spool took."""
    paused: tuple[str, ...]
    """Why intake is paused: queues_full, memory_full; empty while reading."""
    spool_depth: int
    redis_fault: str | None
    """Why Redis took the last write (a batch or a beat) no longer, or None."""
    spool_fault: str | None
    leaving: bool
    stopping: bool
    loop_age: float
    """Seconds since the loop last turned."""

    def healthy(self) -> Verdict:
        if self.loop_age > HEALTHY_WITHIN_SECONDS:
            return Verdict(False, f"the bridge loop has not turned for {self.loop_age:.0f}s")
        return Verdict(True)

    def ready(self) -> Verdict:  # noqa: PLR0911  (a return per reason; the first one wins)
        """Whether this replica takes MQTT messages and puts them somewhere durable now; the
        first reason it does not, in one line."""
        if self.stopping:
            return Verdict(False, "stopping: finishing the messages in hand")
        if not self.connected:
            return Verdict(False, "mqtt is not connected")
        if self.subscribe_refused:
            refused = ", ".join(self.subscribe_refused)
            return Verdict(False, f"mqtt refused the subscription to {refused}")
        if not self.subscribed:
            return Verdict(False, "mqtt is connected but not yet subscribed")
        if self.held:
            why = f"{self.held} messages held: neither redis nor the spool took them"
            return Verdict(False, why)
        if self.redis_fault is not None and self.spool_fault is not None:
            return Verdict(False, f"{self.redis_fault}, and {self.spool_fault}")
        return Verdict(True)

    def beat(self, client_id: str) -> BridgeBeat:
        return BridgeBeat(
            client_id=client_id,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            connected=self.connected,
            subscribed=self.subscribed,
            in_flight=self.in_flight,
            held=self.held,
            paused=",".join(self.paused) or None,
            spool_depth=self.spool_depth,
            leaving=self.leaving,
            seen_at=time.time(),
        )


class StateBeats:
    """Records the bridge's state in Redis every `interval` seconds, for `taskhub status`.

    A beat Redis does not take is skipped (and remembered as a Redis fault): the loop never waits
    on it or fails for it.
    """

    def __init__(self, client: redis.Redis, key_prefix: str, client_id: str, interval: float):
        self.redis = client
        self.key_prefix = key_prefix
        self.client_id = client_id
        self.interval = interval
        self.failure: str | None = None
        """Why the last beat was not recorded, or None."""
        self._next = 0.0

    def due(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self.interval
        return True

    def record(self, state: BridgeState) -> None:
        try:
            beat = state.beat(self.client_id)
            record_beat(self.redis, self.key_prefix, "bridge", self.client_id, beat, self.interval)
        except redis.RedisError as error:
            log.debug("state beat skipped: %s", error)
            self.failure = f"redis is unreachable: {error}"
            return
        self.failure = None

    def forget(self) -> None:
        """At a clean exit: leave `taskhub status` at once rather than after the beat expires."""
        try:
            forget_beat(self.redis, self.key_prefix, "bridge", self.client_id)
        except redis.RedisError as error:
            log.debug("state beat not removed (it expires by itself): %s", error)
