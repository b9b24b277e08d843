"""The bridge's main loop: take a batch from MQTT, judge each message, land the batch in Redis,
then ack the batch in arrival order. Redis trouble pauses the loop and retries with backoff; no
message is acked before Redis holds its task or dead letter.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from bridge.deadletter import DeadLetter
from bridge.intake import Intake
from bridge.messages import TaskCall
from bridge.publisher import PublishFailed, RedisPublisher
from bridge.source import MqttSource, Received
from taskhub.settings import BridgeSettings

log = logging.getLogger("taskhub.bridge")

POLL_SECONDS = 0.25
"""How often an idle loop looks at the stop flag."""
SHUTDOWN_GRACE_SECONDS = 30.0
"""After a stop request, how long to keep retrying a batch Redis will not take."""


@dataclass(slots=True)
class Counters:
    received: int = 0
    enqueued: int = 0
    dead_lettered: int = 0
    abandoned: int = 0
    """Messages given up unacked (connection lost or shutdown); the broker redelivers them."""


class Bridge:
    def __init__(
        self,
        source: MqttSource,
        intake: Intake,
        publisher: RedisPublisher,
        settings: BridgeSettings,
    ) -> None:
        self.source = source
        self.intake = intake
        self.publisher = publisher
        self.settings = settings
        self.counters = Counters()
        self._stop = threading.Event()
        self._stop_requested_at: float | None = None

    def request_stop(self) -> None:
        """Stop taking messages; finish the batch in hand; then run() returns."""
        if not self._stop.is_set():
            self._stop_requested_at = time.monotonic()
            self._stop.set()

    def run(self) -> None:
        self.source.start()
        try:
            while not self._stop.is_set():
                batch = self.source.take(
                    self.settings.batch_size, POLL_SECONDS, self.settings.batch_linger_ms / 1000
                )
                if batch:
                    self._handle(batch)
        finally:
            self.source.stop()
            self.publisher.close()
            log.info(
                "bridge stopped: received=%d enqueued=%d dead_lettered=%d abandoned=%d",
                self.counters.received,
                self.counters.enqueued,
                self.counters.dead_lettered,
                self.counters.abandoned,
            )

    def _handle(self, batch: list[Received]) -> None:
        self.counters.received += len(batch)
        current = [received for received in batch if self.source.is_current(received)]
        self._abandon(len(batch) - len(current), "they arrived on a connection since lost")
        if not current:
            return
        verdicts = [self.intake.judge(received.message) for received in current]
        if not self._land(current, verdicts):
            return
        for received in current:
            self.source.ack(received)
        dead = sum(1 for verdict in verdicts if isinstance(verdict, DeadLetter))
        self.counters.dead_lettered += dead
        self.counters.enqueued += len(current) - dead

    def _land(self, batch: list[Received], verdicts: list[TaskCall | DeadLetter]) -> bool:
        """Publish until Redis takes the batch; False if it was abandoned unacked."""
        delay = self.settings.redis_retry_min_delay
        failing_since: float | None = None
        while True:
            try:
                self.publisher.publish(verdicts)
            except PublishFailed as error:
                now = time.monotonic()
                if failing_since is None:
                    failing_since = now
                    log.error("redis did not take a batch of %d: %s; retrying", len(batch), error)
                if not all(self.source.is_current(received) for received in batch):
                    self._abandon(len(batch), "the mqtt connection dropped while redis was down")
                    return False
                stopping_for = now - (self._stop_requested_at or now)
                if stopping_for > SHUTDOWN_GRACE_SECONDS:
                    self._abandon(len(batch), "redis is still down at shutdown")
                    return False
                time.sleep(delay)  # backoff between attempts, not synchronisation
                delay = min(delay * 2, self.settings.redis_retry_max_delay)
                continue
            if failing_since is not None:
                log.info(
                    "redis took the batch after %.1fs of retries", time.monotonic() - failing_since
                )
            return True

    def _abandon(self, count: int, why: str) -> None:
        if count:
            self.counters.abandoned += count
            log.warning("%d messages left unacked for the broker to redeliver: %s", count, why)
