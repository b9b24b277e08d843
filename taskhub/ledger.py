"""The ledger: every task the bridge enqueues, from the moment Redis holds it until a worker
settles it (effect committed, duplicate absorbed, or failed for good).

It exists because kombu's Redis transport takes a task off its queue (BRPOP) and records it as
unacked in a second round trip: a worker killed between the two loses the task without trace. The
bridge's sweeper finds ledger entries that left their queue but are neither unacked nor settled,
and enqueues them again; the tasks' idempotency absorbs any copy that was not lost after all.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from operator import attrgetter

from redis.client import Pipeline

from taskhub import redis_keys


@dataclass(frozen=True, slots=True)
class LedgerKeys:
    index: str
    """Sorted set: task id -> when it was enqueued (or last checked)."""
    entries: str
    """Hash: task id -> the entry (see LedgerEntry.encode)."""
    sweep_lock: str

    @classmethod
    def for_prefix(cls, key_prefix: str) -> LedgerKeys:
        return cls(
            index=redis_keys.ledger(key_prefix),
            entries=redis_keys.ledger_entries(key_prefix),
            sweep_lock=redis_keys.ledger_sweep_lock(key_prefix),
        )


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    task_id: str
    queue: str
    body: str
    sweeps: int = 0

    def encode(self) -> str:
        """`<sweeps>\t<queue>\t<body>`: queue names hold no tab, and the body is not escaped
        again (JSON-encoding it cost the bridge as much as building it)."""
        return f"{self.sweeps}\t{self.queue}\t{self.body}"

    @classmethod
    def decode(cls, task_id: str, raw: bytes | str) -> LedgerEntry:
        text = raw.decode() if isinstance(raw, bytes) else raw
        # The JSON form bridges wrote before the tab one (0f4aa0f, 2026-11-22): a ledger they
        # left in Redis still reads. An encoded entry starts with its sweep count, never "{".
        if text.startswith("{"):
            fields = json.loads(text)
            return cls(task_id, fields["queue"], fields["body"], int(fields["sweeps"]))
        sweeps, queue, body = text.split("\t", 2)
        return cls(task_id, queue, body, int(sweeps))


def enqueue(
    pipe: Pipeline,
    keys: LedgerKeys,
    entries: Sequence[LedgerEntry],
    now: float,
    *,
    swept: bool = False,
) -> None:
    """Queue on `pipe`, a transaction, each entry's message onto its queue and the entry into the
    ledger: the one way a task is enqueued, so none is ever queued and not in the ledger.

    The ledger's ZADD is the second command queued (its reply counts the entries new to the
    ledger); the LPUSHes follow, one per run of entries for the same queue. `swept` entries
    left their queue and go back to its far end: they take `now` as their score (see `record`).
    """
    record(pipe, keys, entries, now, swept=swept)
    for queue, run in itertools.groupby(entries, key=_queue_of):
        # LPUSH q a b c leaves them as LPUSH a, b, c would, in one command.
        pipe.lpush(queue, *(entry.body for entry in run))


_queue_of = attrgetter("queue")


def record(
    pipe: Pipeline,
    keys: LedgerKeys,
    entries: Iterable[LedgerEntry],
    now: float,
    *,
    swept: bool = False,
) -> None:
    """Queue the recording of `entries` on `pipe`, in the transaction that enqueues them.

    Scores rise by a microsecond per entry, in enqueue order: the sweeper compares them with
    the queue's tail to tell what has left a FIFO queue, so a batch must not tie. A task enqueued
    again (an MQTT redelivery after a bridge crash) keeps its first score: its first copy is
    still in the queue, and a newer score would make every task between the copies look lost.
    A `swept` task is the exception: it had left its queue, and goes in again at the far end,
    so it must look as young as it is there, or the tasks ahead of it would all look lost.
    """
    entries = list(entries)
    if entries:
        pipe.hset(keys.entries, mapping={entry.task_id: entry.encode() for entry in entries})
        scores = {entry.task_id: now + i * 1e-6 for i, entry in enumerate(entries)}
        pipe.zadd(keys.index, scores, nx=not swept)


def settle(pipe: Pipeline, keys: LedgerKeys, task_id: str) -> None:
    """Queue the removal of `task_id`'s entry on `pipe`: nothing more will be asked of it."""
    pipe.hdel(keys.entries, task_id)
    pipe.zrem(keys.index, task_id)


def requeued(pipe: Pipeline, keys: LedgerKeys, task_id: str, now: float) -> None:
    """Queue a new score for `task_id`, just put back at its queue's far end (a rejected task
    requeued, a lost pool child's task given back), in the transaction that puts it there.

    With its first score it would sit behind younger tasks, and the sweeper, which reads every
    entry older than the queue's tail as gone from the queue, would take it for lost while it
    waits. A settled task stays settled (XX)."""
    pipe.zadd(keys.index, {task_id: now}, xx=True)
