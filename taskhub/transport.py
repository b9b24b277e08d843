"""kombu's Redis transport as taskhub's workers need it: a pool that waits, one client object per
channel, tasks of a lost worker given back in gevent workers too, and a full Redis waited out.

- kombu's pool raises when it runs out of connections, and the error drops the channel's
  connection with a task in flight; this one waits for a free connection instead.
- kombu builds a new `redis.Redis` around its connection pool for every publish and every ack.
  redis-py's constructor is costly (its response-callback tables). In a gevent worker, which acks
  hundreds of tasks a second, it was 8% of the process (py-spy). The client holds no connection of
  its own, so one per channel (per pool) serves every command.
- A worker without an event loop (gevent, threads, solo) drains the broker with
  `drain_events`. There kombu looks for tasks whose visibility timeout has passed only when a
  poll finds nothing to read. But BRPOP's own one-second timeout always gives the poll something
  to read, so such a worker never gives a dead worker's tasks back. This transport looks every
  `unacked_restore_interval` seconds, as kombu's event-loop path does.
- A task requeued at its queue's far end (a `Reject(requeue=True)`, a lost pool child) gets a new
  ledger score in the same transaction, so the bridge's sweeper never takes it for lost.
- A Redis at maxmemory (noeviction) refuses writes and every command inside MULTI. kombu treats
  that as a channel error and the worker exited ("Unrecoverable error: OutOfMemoryError"), at
  start (a queue's size is read in MULTI) or on its next task. Here each such step waits until
  memory is freed (taskhub/maxmemory.py); acks, which free memory, leave MULTI out.
- Each BRPOP reply read and each task acked or given back stamps the consumer's progress
  (taskhub/telemetry/progress.py): a worker's readiness is read from it.
- A gevent worker's loop looks whether it should stop only between two `drain_events(2.0)`,
  and kombu's Redis poll waits up to that timeout again inside one: a stopped worker went on
  draining for up to 5 s, and once more after it noticed. Here a drain ends within
  STOP_CHECK_SECONDS of a stop; in any other process it waits its whole timeout as before.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from queue import Empty
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from redis.client import Pipeline
from redis.exceptions import OutOfMemoryError

from taskhub.ledger import LedgerKeys, requeued
from taskhub.maxmemory import wait_while_full
from taskhub.settings import get_settings
from taskhub.shutdown import stopping
from taskhub.telemetry.progress import PROGRESS

log = logging.getLogger("taskhub.transport")

POOL_WAIT_SECONDS = 30.0
"""How long an ack or publish waits for a free connection before it fails."""
STOP_CHECK_SECONDS = 0.25
"""Longest a worker's drain waits on Redis before it looks whether the worker is stopping."""


class QoS(kombu_redis.QoS):
    """Unacked bookkeeping that survives a full Redis."""

    def append(self, message: Any, delivery_tag: Any) -> None:
        # The task has left its queue (BRPOP frees memory, so Redis allows it); until it is
        # recorded as unacked it exists only here, so wait rather than drop it.
        wait_while_full(partial(super().append, message, delivery_tag), "taking a task")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._refused_restores: dict[Any, bool] = {}
        """Tasks Redis refused to give back, by tag, with whether they go to the far end."""

    def ack(self, delivery_tag: Any) -> None:
        message = self._delivered.get(delivery_tag)
        super().ack(delivery_tag)  # type: ignore[no-untyped-call]
        queue = message.delivery_info.get("routing_key") if message is not None else None
        PROGRESS.task_finished(queue)

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        super().reject(delivery_tag, requeue)  # type: ignore[no-untyped-call]
        PROGRESS.task_given_back()

    def restore_by_tag(self, tag: Any, client: Any = None, leftmost: bool = False) -> None:
        # kombu moves the task from the unacked hash to its queue in one transaction, so a
        # refusal leaves it in the hash. Waiting here instead held the task past its hard time
        # limit, and Celery acked it as failed (scripts/chaos: 5 check-ins dead-lettered). It is
        # tried again at each restore sweep: left to the visibility timeout, it waited 300 s.
        try:
            super().restore_by_tag(tag, client, leftmost)  # type: ignore[no-untyped-call]
        except OutOfMemoryError:
            log.warning("redis is at maxmemory: task %s stays unacked until memory is freed", tag)
            self._refused_restores[tag] = leftmost
        else:
            self._refused_restores.pop(tag, None)

    def restore_refused(self) -> None:
        """Give back the tasks a full Redis refused to requeue; those it still refuses wait."""
        for tag, leftmost in list(self._refused_restores.items()):
            self.restore_by_tag(tag, leftmost=leftmost)
            if tag in self._refused_restores:
                return  # still full: the next sweep tries again
            log.warning("redis has memory again: task %s given back", tag)

    def restore_visible(self, start: int = 0, num: int = 10, interval: int = 10) -> None:
        try:
            self.restore_refused()
            super().restore_visible(start, num, interval)  # type: ignore[no-untyped-call]
        except OutOfMemoryError:  # its lock is a write; the next sweep tries again
            log.debug("unacked restore skipped: redis is at maxmemory")

    def restore_unacked(self, client: Any = None) -> None:
        self.restore_refused()
        super().restore_unacked(client)  # type: ignore[no-untyped-call]

    def _remove_from_indices(self, delivery_tag: Any, pipe: Any = None) -> Any:
        if pipe is not None:
            return super()._remove_from_indices(delivery_tag, pipe)  # type: ignore[no-untyped-call]
        # An ack: ZREM and HDEL are each idempotent and need no MULTI, which a full Redis would
        # refuse, though an ack frees memory.
        with self.channel.conn_or_acquire() as client:
            unbatched = client.pipeline(transaction=False)
            return super()._remove_from_indices(delivery_tag, unbatched)  # type: ignore[no-untyped-call]


class Channel(kombu_redis.Channel):
    QoS = QoS
    _shared_client: Any = None

    def _get_pool(self, asynchronous: bool = False) -> Any:
        """A pool that makes a command wait for a free connection rather than raise
        MaxConnectionsError: that error made kombu drop its connection, and the BRPOP in flight
        lost its task (seen in the benchmark's rate-limited stage, 1 task in 2,000-4,000)."""
        if asynchronous:
            return super()._get_pool(asynchronous=True)  # type: ignore[no-untyped-call]
        params = self._connparams(asynchronous=False)
        self.keyprefix_fanout = self.keyprefix_fanout.format(db=params["db"])
        return redis.BlockingConnectionPool(timeout=POOL_WAIT_SECONDS, **params)

    def _connparams(self, asynchronous: bool = False) -> Any:
        """A closed channel's (its connection closed under a greenlet still acking or restoring)
        raise a connection error, which Celery recovers from by reconnecting, rather than kombu's
        AttributeError, which ended a gevent worker for good when Redis was killed under it."""
        transport = self.connection
        if transport is None or transport.client is None:
            raise redis.ConnectionError("the broker connection is closed")
        return super()._connparams(asynchronous=asynchronous)  # type: ignore[no-untyped-call]

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[no-untyped-call]
        client = self._shared_client
        if client is None or client.connection_pool is not self.pool:  # a new pool after a loss
            client = self._shared_client = super()._create_client()  # type: ignore[no-untyped-call]
        return client

    def _do_restore_message(
        self,
        payload: Any,
        exchange: Any,
        routing_key: Any,
        pipe: Pipeline,
        leftmost: bool = False,
    ) -> None:
        """Put a message back and, when it goes to the far end (LPUSH: a requeue, where a
        visibility-timeout restore goes to the near end), move its ledger score with it."""
        super()._do_restore_message(payload, exchange, routing_key, pipe, leftmost)  # type: ignore[no-untyped-call]
        task_id = (payload.get("headers") or {}).get("id") if isinstance(payload, dict) else None
        if leftmost and task_id:
            keys = LedgerKeys.for_prefix(get_settings().key_prefix)
            requeued(pipe, keys, str(task_id), time.time())

    def _brpop_read(self, **options: Any) -> Any:
        # Reached by the event loop (prefork) and by drain_events (gevent) alike. "Nothing"
        # (Empty, BRPOP's timeout) is progress too; a connection error is not.
        try:
            delivered = super()._brpop_read(**options)  # type: ignore[no-untyped-call]
        except Empty:
            PROGRESS.polled()
            raise
        PROGRESS.polled()
        return delivered

    def _size(self, queue: str) -> Any:
        return wait_while_full(partial(super()._size, queue), "reading a queue")

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> Any:
        bind = partial(super()._queue_bind, exchange, routing_key, pattern, queue)
        return wait_while_full(bind, "binding a queue")

    def _put(self, queue: str, message: Any, **kwargs: Any) -> Any:
        return wait_while_full(partial(super()._put, queue, message, **kwargs), "sending a task")


class Transport(kombu_redis.Transport):
    """`broker_transport` for taskhub's Redis broker (celeryconfig.py)."""

    Channel = Channel
    _next_restore = 0.0

    def drain_events(self, connection: Any, timeout: Any = None) -> Any:  # type: ignore[override]
        now = time.monotonic()
        if now >= self._next_restore:
            options = connection.client.transport_options
            interval = options.get("unacked_restore_interval") or Channel.unacked_restore_interval
            self._next_restore = now + interval
            self.cycle.maybe_restore_messages()  # type: ignore[union-attr]
        if timeout is None or timeout <= STOP_CHECK_SECONDS:
            return super().drain_events(connection, timeout)  # type: ignore[no-untyped-call]
        deadline = now + timeout
        while True:
            slice_ = min(STOP_CHECK_SECONDS, max(0.0, deadline - time.monotonic()))
            try:
                return super().drain_events(connection, slice_)  # type: ignore[no-untyped-call]
            except TimeoutError:
                if stopping() or time.monotonic() >= deadline:
                    raise
