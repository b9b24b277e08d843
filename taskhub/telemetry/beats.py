"""Each bridge and worker records its state in Redis every `beat_interval` seconds, under a key
that expires after a few missed beats; `taskhub status` and the queue metrics read them back.
A process that dies simply stops being listed.
"""

from __future__ import annotations

import json
import math
import time
from typing import Literal

import redis
from pydantic import BaseModel

from taskhub import redis_keys

Role = Literal["bridge", "worker"]

MISSED_BEATS = 5
"""A record outlives its writer by this many beats, then Redis drops it."""


class BridgeBeat(BaseModel):
    """One bridge replica, as `taskhub status` shows it."""

    client_id: str
    hostname: str
    pid: int
    connected: bool
    subscribed: bool
    in_flight: int
    """MQTT messages received and not yet acked."""
    held: int
    """Messages in a batch waiting to land (Redis and the spool both refused it)."""
    paused: str | None
    """Why intake is paused (queues_full, memory_full), or None."""
    spool_depth: int
    leaving: bool
    seen_at: float


class WorkerBeat(BaseModel):
    """One worker process (its main process: pool children are counted in its pool)."""

    hostname: str
    pid: int
    pool: str
    queues: list[str]
    pool_current: int
    pool_min: int
    pool_max: int
    active: int
    """Tasks running now."""
    ready: bool
    """The consumer made progress within `stall_after` (see taskhub.telemetry.progress)."""
    progress_age: float
    """Seconds since the consumer last polled the broker or finished a task."""
    finished_per_second: dict[str, float] = {}
    """Tasks finished per second over the last 10 s, by queue: the queues' out rate."""
    seen_at: float


Beat = BridgeBeat | WorkerBeat


def record_beat(
    client: redis.Redis, key_prefix: str, role: Role, name: str, beat: Beat, interval: float
) -> None:
    ttl = max(1, math.ceil(interval * MISSED_BEATS))
    client.set(redis_keys.beat(key_prefix, role, name), beat.model_dump_json(), ex=ttl)


def forget_beat(client: redis.Redis, key_prefix: str, role: Role, name: str) -> None:
    """A process that stops cleanly leaves the list at once."""
    client.delete(redis_keys.beat(key_prefix, role, name))


def _read(client: redis.Redis, key_prefix: str, role: Role) -> list[dict[str, object]]:
    found = sorted(client.scan_iter(match=redis_keys.beat(key_prefix, role, "*"), count=500))
    if not found:
        return []
    return [json.loads(raw) for raw in client.mget(found) if raw is not None]


def bridge_beats(client: redis.Redis, key_prefix: str) -> list[BridgeBeat]:
    return [BridgeBeat.model_validate(raw) for raw in _read(client, key_prefix, "bridge")]


def worker_beats(client: redis.Redis, key_prefix: str) -> list[WorkerBeat]:
    return [WorkerBeat.model_validate(raw) for raw in _read(client, key_prefix, "worker")]


def age(beat: Beat, now: float | None = None) -> float:
    return max(0.0, (now if now is not None else time.time()) - beat.seen_at)
