"""The ledger sweeper: finds tasks that left their queue but no worker holds or finished, and
enqueues them again with a fresh delivery tag.

Ledger scores are enqueue times and only move forward with a new enqueue at the queue's far end
(a sweep, a Celery retry, or a worker's requeue, which taskhub's transport scores in the same
transaction), so the queue stays in score order.

kombu's Redis transport pops a task (BRPOP) and records it as unacked in a second round trip; a
worker killed in between loses the task. Queues are FIFO, so a ledger entry older than the
message at its queue's tail has left the queue; if kombu's unacked hash does not hold it either
and it is not settled, it was lost. Guesses err toward enqueueing again: a copy that was not lost
is absorbed by the task's idempotency.

A pass reads at most `scan_limit` entries, from where the last pass stopped, so entries that
cannot be judged yet (a backlog waiting in one queue) never hide a lost task of another for long.
An entry for a queue that no route names is dead-lettered as `unknown_queue`.
"""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

import redis

from taskhub.deadletters import DeadLetter, DeadLetterStream, FailedTask, Reason
from taskhub.ledger import LedgerEntry, LedgerKeys, enqueue, settle
from taskhub.redis_keys import KOMBU_UNACKED
from taskhub.telemetry.deadletter_log import log_dead_letter

log = logging.getLogger("taskhub.bridge.sweeper")

SWEEP_BATCH = 500
"""Ledger entries read per round trip."""
SCAN_LIMIT = 10 * SWEEP_BATCH
"""Ledger entries one pass reads at most; the next pass goes on from there."""
MAX_SWEEPS = 5
"""How often one task is enqueued again before it is dead-lettered as never completing."""
LOCK_SECONDS = 30
START = "-inf"
"""The lowest ledger score: where a pass starts when the last one read to the end."""


class Sweeper:
    def __init__(
        self,
        client: redis.Redis,
        keys: LedgerKeys,
        queues: Sequence[str],
        grace: float,
        letters: DeadLetterStream,
        scan_limit: int = SCAN_LIMIT,
    ) -> None:
        self.redis = client
        self.keys = keys
        self.queues = tuple(queues)
        self.grace = grace
        self.letters = letters
        """Where tasks given up on go; only its stream and cap are used, on this client."""
        self.scan_limit = scan_limit
        self.requeued = 0
        self.never_completed = 0
        """Tasks dead-lettered as `never_completed`: enqueued again MAX_SWEEPS times already."""
        self.unknown_queue = 0
        """Tasks dead-lettered as `unknown_queue`: their queue is in no route."""
        self._resume_from = START
        """The score bound the next pass starts from: the last pass's end, or the beginning."""

    def sweep(self, now: float | None = None) -> int:
        """One pass; returns how many tasks were enqueued again. Raises redis errors."""
        now = time.time() if now is None else now
        if not self.redis.set(self.keys.sweep_lock, "1", nx=True, ex=LOCK_SECONDS):
            return 0  # another replica is sweeping
        try:
            return self._sweep(now)
        finally:
            self.redis.delete(self.keys.sweep_lock)

    def _sweep(self, now: float) -> int:
        tails = {queue: self._tail_enqueued_at(queue) for queue in self.queues}
        # Exclusive of `now - grace`: an entry enqueued again in this pass is not read again in it.
        newest = f"({now - self.grace!r}"
        resumed, self._resume_from = self._resume_from, START
        # From where the last pass stopped to the newest entry old enough, then from the oldest
        # entry back to that point: every entry is read in turn, however long the ledger.
        segments = [(resumed, newest)]
        if resumed != START:
            segments.append((START, resumed.removeprefix("(")))
        requeued, budget = 0, self.scan_limit
        for low, high in segments:
            while budget > 0:
                page = min(SWEEP_BATCH, budget)
                found: list[Any] = self.redis.zrangebyscore(
                    self.keys.index, low, high, start=0, num=page, withscores=True
                )
                budget -= len(found)
                if found:
                    requeued += self._judge(found, tails, now)
                    low = self._resume_from = f"({float(found[-1][1])!r}"
                if len(found) < page:
                    self._resume_from = START  # read to the end of this segment
                    break
        return requeued

    def _judge(self, found: list[Any], tails: dict[str, float], now: float) -> int:
        candidates = [(_text(task_id), float(score)) for task_id, score in found]
        raws = self.redis.hmget(self.keys.entries, [task_id for task_id, _ in candidates])
        requeued = 0
        # Scores are enqueue times and never move back, so in score order, once an entry may
        # still be queued, so may every later one of that queue.
        for (task_id, enqueued_at), raw in zip(candidates, raws, strict=True):
            if raw is None:
                self.redis.zrem(self.keys.index, task_id)  # settled meanwhile
                continue
            entry = LedgerEntry.decode(task_id, raw)
            if entry.queue not in tails:
                self._dead_letter(entry, _unknown_queue(entry))
                self.unknown_queue += 1
                continue
            if enqueued_at >= tails[entry.queue] or self._unacked(entry):
                continue  # maybe still queued, or a worker holds it
            requeued += self._enqueue_again(entry, now)
        return requeued

    def _tail_enqueued_at(self, queue: str) -> float:
        """When the next task to leave `queue` was enqueued; +inf if the queue is empty, -inf if
        that task is not in the ledger (then nothing older can be judged this pass)."""
        tail = self.redis.lindex(queue, -1)
        if tail is None:
            return float("inf")
        try:
            task_id = str(json.loads(tail)["headers"]["id"])
        except (ValueError, KeyError, TypeError):
            return float("-inf")  # not a task message we can read: judge nothing behind it
        score = self.redis.zscore(self.keys.index, task_id)
        return float("-inf") if score is None else float(score)

    def _unacked(self, entry: LedgerEntry) -> bool:
        tag = json.loads(entry.body)["properties"]["delivery_tag"]
        return bool(self.redis.hexists(KOMBU_UNACKED, tag))

    def _enqueue_again(self, entry: LedgerEntry, now: float) -> int:
        if entry.sweeps >= MAX_SWEEPS:
            self._dead_letter(entry, _never_completed(entry))
            self.never_completed += 1
            return 0
        message = json.loads(entry.body)
        # A fresh tag: two live copies under one tag would share kombu's unacked entry.
        message["properties"]["delivery_tag"] = str(uuid.uuid4())
        again = LedgerEntry(entry.task_id, entry.queue, json.dumps(message), entry.sweeps + 1)
        with self.redis.pipeline(transaction=True) as pipe:
            # Enqueued like a new task, at the far end with a new time: the queue's tail must
            # keep holding its oldest enqueue time, or older entries would all look lost.
            enqueue(pipe, self.keys, [again], now, swept=True)
            pipe.execute()
        self.requeued += 1
        log.warning(
            "task %s left %s but no worker holds or finished it: enqueued again",
            entry.task_id,
            entry.queue,
        )
        return 1

    def _dead_letter(self, entry: LedgerEntry, letter: DeadLetter) -> None:
        """Dead-letter `entry` and drop it from the ledger, in one transaction."""
        with self.redis.pipeline(transaction=True) as pipe:
            self.letters.add_to(pipe, letter)
            settle(pipe, self.keys, entry.task_id)
            entry_id = pipe.execute()[0]
        log_dead_letter(letter, _text(entry_id))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _never_completed(entry: LedgerEntry) -> DeadLetter:
    """A task letter for `entry`, its arguments read back from the message, for replay."""
    task, args, kwargs = _call_in(entry.body)
    return DeadLetter(
        Reason.NEVER_COMPLETED,
        f"task {entry.task_id} on {entry.queue} was lost or failed {entry.sweeps} times",
        route=entry.queue,
        task=FailedTask(task, entry.task_id, entry.queue, args, kwargs),
    )


def _unknown_queue(entry: LedgerEntry) -> DeadLetter:
    """A task letter for an entry whose queue no route names (a route removed or renamed)."""
    task, args, kwargs = _call_in(entry.body)
    return DeadLetter(
        Reason.UNKNOWN_QUEUE,
        f"task {entry.task_id} was enqueued on {entry.queue}, which no route names now; "
        "it may still wait there, unread",
        route=entry.queue,
        task=FailedTask(task, entry.task_id, entry.queue, args, kwargs),
    )


def _call_in(body: str) -> tuple[str, list[Any], dict[str, Any]]:
    """(task name, args, kwargs) of a JSON task message as kombu stores it; blanks if unreadable."""
    try:
        message = json.loads(body)
        args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        return str(message["headers"]["task"]), list(args), dict(kwargs)
    except (ValueError, KeyError, TypeError):
        return "", [], {}
