"""The dead-letter stream: every input taskhub refused and every task that failed for good, with the
reason, kept in one capped Redis stream (in the broker's Redis) for inspection and replay.

Two kinds share the stream. A *message* letter is an MQTT message the bridge refused: its topic and
exact payload bytes, so replay can judge it again. A *task* letter is a task that failed for good or
that a worker refused: its name, id, arguments and the error, so replay can enqueue it again.
"""

from __future__ import annotations

import base64
import functools
import json
import math
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import redis
from redis.client import Pipeline

from taskhub import redis_keys
from taskhub.redaction import redact, redact_document
from taskhub.settings import get_settings

DEFAULT_MAXLEN = 100_000
"""TASKHUB_BRIDGE__DEADLETTER_MAXLEN's default, for a handle that only reads."""
SCAN_CHUNK = 500
REDIS_TIMEOUT_SECONDS = 5.0
"""How long this process's handle on the stream (`deadletter_stream()`) waits on Redis, to connect
or for a reply, before it gives up with an error: a worker recording a failure is held up no
longer, and the CLI says that Redis is unreachable rather than hang."""


class LetterKind(StrEnum):
    """What a dead letter holds: a refused MQTT message or a task that failed for good. The values
    are the `kind` field of letters already in the stream: never change one."""

    MESSAGE = "message"
    TASK = "task"


class Reason(StrEnum):
    # The bridge refused an MQTT message.
    NO_ROUTE = "no_route"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"
    SCHEMA = "schema"
    BAD_TOPIC_PARAMETER = "bad_topic_parameter"
    RESPONSE_TOPIC_REFUSED = "response_topic_refused"
    """An MQTT 5 request whose Response Topic TASKHUB_REPLIES__ALLOWED_TOPICS does not allow (or
    no topic could be: a wildcard, an empty one). It gets no reply; replay runs it without one."""
    # A task failed or was refused.
    TASK_FAILED = "task_failed"
    NEVER_COMPLETED = "never_completed"
    UNKNOWN_QUEUE = "unknown_queue"
    """A ledger entry for a queue that no route names: no sweep can judge or requeue it."""
    WORKER_LOST = "worker_lost"
    """A task whose runs killed their worker too often: it is not run again."""
    CONTENT_DISALLOWED = "content_disallowed"
    UNKNOWN_TASK = "unknown_task"
    INVALID_TASK = "invalid_task"


NOT_REPLAYABLE = frozenset({Reason.CONTENT_DISALLOWED, Reason.INVALID_TASK})
"""Letters whose payload must never be run: kept for inspection only."""


@dataclass(frozen=True, slots=True)
class FailedTask:
    """The task half of a task letter."""

    name: str
    task_id: str
    queue: str
    args: list[Any]
    kwargs: dict[str, Any]
    exception: str = ""
    """The exception's type, e.g. `tasks.checkins.CheckinNotResolvable`."""
    traceback: str = ""
    retries: int = 0


@dataclass(frozen=True, slots=True)
class DeadLetter:
    reason: Reason
    detail: str
    topic: str = ""
    payload: bytes = b""
    route: str | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    task: FailedTask | None = None
    id: str = ""
    """The stream entry id once stored (`<ms>-<seq>`); empty before."""

    @property
    def kind(self) -> LetterKind:
        return LetterKind.TASK if self.task is not None else LetterKind.MESSAGE

    @property
    def replayable(self) -> bool:
        return self.reason not in NOT_REPLAYABLE

    def to_fields(self) -> dict[str, str]:
        """Flat string fields for XADD; payload bytes kept exactly (base64 where not UTF-8), and
        secrets masked in the detail, traceback and properties (never in the payload or the
        arguments, which replay needs as they were)."""
        try:
            payload, encoding = self.payload.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            payload, encoding = base64.b64encode(self.payload).decode("ascii"), "base64"
        fields = {
            "kind": self.kind.value,
            "reason": self.reason.value,
            "detail": redact(self.detail),
            "topic": self.topic,
            "payload": payload,
            "payload_encoding": encoding,
            "route": self.route or "",
            "received_at": self.received_at.isoformat(),
            "properties": json.dumps(redact_document(self.properties), default=str),
        }
        if self.task is not None:
            fields.update(
                task=self.task.name,
                task_id=self.task.task_id,
                queue=self.task.queue,
                args=json.dumps(self.task.args, default=str),
                kwargs=json.dumps(self.task.kwargs, default=str),
                exception=self.task.exception,
                traceback=redact(self.task.traceback),
                retries=str(self.task.retries),
            )
        return fields

    @classmethod
    def from_fields(cls, entry_id: str, fields: dict[str, str]) -> DeadLetter:
        """The letter stored as `fields` under `entry_id`; tolerant of missing fields."""
        payload = fields.get("payload", "")
        if fields.get("payload_encoding") == "base64":
            raw = base64.b64decode(payload)
        else:
            raw = payload.encode("utf-8")
        task = None
        if fields.get("kind") == LetterKind.TASK.value:
            task = FailedTask(
                name=fields.get("task", ""),
                task_id=fields.get("task_id", ""),
                queue=fields.get("queue", ""),
                args=_json_or(fields.get("args"), []),
                kwargs=_json_or(fields.get("kwargs"), {}),
                exception=fields.get("exception", ""),
                traceback=fields.get("traceback", ""),
                retries=int(fields.get("retries") or 0),
            )
        return cls(
            reason=_reason(fields.get("reason", "")),
            detail=fields.get("detail", ""),
            topic=fields.get("topic", ""),
            payload=raw,
            route=fields.get("route") or None,
            properties=_json_or(fields.get("properties"), {}),
            received_at=_time_of(fields.get("received_at"), entry_id),
            task=task,
            id=entry_id,
        )


def _json_or(text: str | None, default: Any) -> Any:
    try:
        return json.loads(text) if text else default
    except ValueError:
        return default


def _reason(text: str) -> Reason:
    try:
        return Reason(text)
    except ValueError:
        return Reason.INVALID_TASK


def _time_of(text: str | None, entry_id: str) -> datetime:
    if text:
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            pass
    milliseconds = int(entry_id.partition("-")[0] or 0)
    return datetime.fromtimestamp(milliseconds / 1000, UTC)


MINUTE_COUNTS_TTL = 2 * 3600
"""Seconds one minute's counts are kept: `taskhub status` sums the last 60 for its "last hour"
without reading the letters themselves."""


def add_letter(pipe: Pipeline, stream: str, fields: Mapping[str, str], maxlen: int) -> None:
    """Queue one letter (`DeadLetter.to_fields`) on `pipe`, to land with the rest of its
    transaction: its XADD, capped at `maxlen` (approximately: Redis trims whole nodes), and its
    counts. Every writer of the stream comes through here, so none can forget the cap."""
    pipe.xadd(stream, fields, maxlen=maxlen, approximate=True)  # type: ignore[arg-type]
    count_letter(pipe, stream, fields["reason"])


def count_letter(pipe: Pipeline, stream: str, reason: str, now: float | None = None) -> None:
    """Queue the count of one more letter for `reason`, beside its XADD in the same transaction."""
    pipe.hincrby(redis_keys.deadletter_counts(stream), reason, 1)
    minute = redis_keys.deadletter_minute_counts(
        stream, int((time.time() if now is None else now) // 60)
    )
    pipe.hincrby(minute, reason, 1)
    pipe.expire(minute, MINUTE_COUNTS_TTL)


@dataclass(frozen=True, slots=True)
class LetterFilter:
    """Which letters a command looks at; empty fields match everything."""

    reasons: frozenset[Reason] = frozenset()
    route: str | None = None
    """Exact route name or queue, or the task's name."""
    since: datetime | None = None
    until: datetime | None = None
    ids: frozenset[str] = frozenset()

    @property
    def empty(self) -> bool:
        return self == LetterFilter()

    def admits(self, letter: DeadLetter) -> bool:
        if self.ids and letter.id not in self.ids:
            return False
        if self.reasons and letter.reason not in self.reasons:
            return False
        return not (self.route is not None and self.route not in _route_names(letter))

    def stream_bounds(self) -> tuple[str, str]:
        """XRANGE bounds from the time range: entry ids are millisecond timestamps."""
        low = f"{int(self.since.timestamp() * 1000)}-0" if self.since else "-"
        high = f"{int(self.until.timestamp() * 1000)}-18446744073709551615" if self.until else "+"
        return low, high


def _route_names(letter: DeadLetter) -> set[str]:
    names = {letter.route or ""}
    if letter.route and ":" in letter.route:
        names.add(letter.route.partition(":")[0])
    if letter.task is not None:
        names.update({letter.task.name, letter.task.queue})
    return names


class DeadLetterStream:
    """A handle on the dead-letter stream: adds, reads, counts and deletes letters."""

    def __init__(self, client: redis.Redis, key_prefix: str, maxlen: int = DEFAULT_MAXLEN) -> None:
        self.redis = client
        self.key_prefix = key_prefix
        self.key = redis_keys.deadletters(key_prefix)
        self.maxlen = maxlen

    def add(self, letter: DeadLetter) -> str:
        with self.redis.pipeline(transaction=True) as pipe:
            self.add_to(pipe, letter)
            entry_id = pipe.execute()[0]
        return _text(entry_id)

    def counts(self) -> dict[str, int]:
        """Letters ever added, by reason; deleting or replaying a letter keeps its count."""
        return _counts(self.redis.hgetall(redis_keys.deadletter_counts(self.key)))

    def counts_since(self, seconds: float, now: float | None = None) -> dict[str, int]:
        """Letters added in the last `seconds` (to the minute, at most two hours), by reason."""
        now = time.time() if now is None else now
        last = int(now // 60)
        minutes = range(last - max(0, math.ceil(seconds / 60) - 1), last + 1)
        with self.redis.pipeline(transaction=False) as pipe:
            for minute in minutes:
                pipe.hgetall(redis_keys.deadletter_minute_counts(self.key, minute))
            replies = pipe.execute()
        total: Counter[str] = Counter()
        for reply in replies:
            total.update(_counts(reply))
        return dict(total)

    def add_to(self, pipe: Pipeline, letter: DeadLetter) -> None:
        """Queue the letter's XADD on `pipe`, so it lands with the rest of a transaction."""
        add_letter(pipe, self.key, letter.to_fields(), self.maxlen)

    def __len__(self) -> int:
        return int(self.redis.xlen(self.key))

    def get(self, entry_id: str) -> DeadLetter | None:
        found = _entries(self.redis.xrange(self.key, entry_id, entry_id))
        return DeadLetter.from_fields(*found[0]) if found else None

    def scan(
        self, which: LetterFilter = LetterFilter(), newest_first: bool = True
    ) -> Iterator[DeadLetter]:
        """Every letter `which` admits, newest first, read in chunks."""
        low, high = which.stream_bounds()
        while True:
            if newest_first:
                chunk = _entries(self.redis.xrevrange(self.key, high, low, count=SCAN_CHUNK))
            else:
                chunk = _entries(self.redis.xrange(self.key, low, high, count=SCAN_CHUNK))
            for entry_id, fields in chunk:
                letter = DeadLetter.from_fields(entry_id, fields)
                if which.admits(letter):
                    yield letter
            if len(chunk) < SCAN_CHUNK:
                return
            last = chunk[-1][0]
            if newest_first:
                high = "(" + last
            else:
                low = "(" + last

    def delete(self, entry_ids: Iterable[str]) -> int:
        ids = list(entry_ids)
        return int(self.redis.xdel(self.key, *ids)) if ids else 0


def deadletter_stream() -> DeadLetterStream:
    """This process's handle on the stream, in the broker's Redis, next to the queues: where
    workers write the letters of failed and refused tasks and the CLI reads and replays them.
    Built at first use; a forked pool child builds its own, as a connection must not cross a
    fork."""
    return _stream_for(os.getpid())


@functools.cache
def _stream_for(pid: int) -> DeadLetterStream:
    settings = get_settings()
    client = redis.Redis.from_url(
        settings.broker_url.get_secret_value(),
        socket_timeout=REDIS_TIMEOUT_SECONDS,
        socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
    )
    return DeadLetterStream(client, settings.key_prefix, settings.bridge.deadletter_maxlen)


def _counts(raw: dict[Any, Any]) -> dict[str, int]:
    return {_text(reason): int(count) for reason, count in raw.items()}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entries(raw: Any) -> list[tuple[str, dict[str, str]]]:
    """XRANGE's reply as (entry id, fields) in text."""
    return [
        (_text(entry_id), {_text(k): _text(v) for k, v in (fields or {}).items()})
        for entry_id, fields in raw or ()
    ]
