"""Celery protocol-2 task messages, built directly in the envelope kombu's Redis transport stores.

Celery's own `send_task` spends most of its time per message in machinery the bridge does not need;
building the same JSON here lets a whole batch go to Redis in one pipeline. A test compares these
messages with the ones `apply_async` writes, so the two cannot drift apart. Dead-letter replay
builds its messages here too, so a replayed task is the message the bridge would have sent.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from json.encoder import encode_basestring_ascii
from typing import Any

from celery import Celery

from taskhub.argsrepr import argsrepr
from taskhub.deferral import SENT_AT_HEADER

ARGSREPR_MAX = 1024
"""Celery's default `argsrepr_maxsize`: how much of the arguments Flower gets to show."""
RANDOM_POOL_BYTES = 16 * 256
"""`os.urandom` is a system call; one call serves 256 delivery tags."""
TASK_ID_NAMESPACE = uuid.UUID("6f1c0f0e-3b0a-5d2c-9a57-7a736b687562")
_NAMESPACE_BYTES = TASK_ID_NAMESPACE.bytes


@dataclass(frozen=True, slots=True)
class TaskCall:
    """One task invocation the bridge will enqueue."""

    task: str
    task_id: str
    queue: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    headers: Mapping[str, Any] | None = None
    """Extra message headers, as `apply_async(headers=...)` adds them: a reply address
    (taskhub/replies.py) or a trace context (taskhub/tracing.py)."""


def deterministic_task_id(task: str, identity: str) -> str:
    """The same message always yields the same task id, so redeliveries can be recognised.

    It is `str(uuid.uuid5(TASK_ID_NAMESPACE, ...))`, computed without UUID objects.
    """
    name = _NAMESPACE_BYTES + f"{task}\x00{identity}".encode()
    digest = bytearray(hashlib.sha1(name, usedforsecurity=False).digest())  # as UUIDv5 defines
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    return _formatted(bytes(digest[:16]))


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """What `apply_async` stamps on a task's messages from the task's own settings (which
    Celery fills from the config where the decorator left them unset)."""

    time_limit: float | None = None
    soft_time_limit: float | None = None
    ignore_result: bool = False

    @classmethod
    def of(cls, task: Any) -> TaskOptions:
        return cls(task.time_limit, task.soft_time_limit, bool(task.ignore_result))

    def rendered(self) -> tuple[str, str]:
        """The `timelimit` and `ignore_result` header values as JSON."""
        return json.dumps([self.time_limit, self.soft_time_limit]), json.dumps(self.ignore_result)


class MessageBuilder:
    """Turns TaskCalls into the JSON strings a stock Celery worker consumes from a Redis list."""

    def __init__(
        self,
        time_limits: tuple[float | None, float | None] = (None, None),
        origin: str | None = None,
        *,
        ignore_result: bool = False,
        tasks: Mapping[str, TaskOptions] | None = None,
    ) -> None:
        """`tasks` holds each task's own options; other tasks get `time_limits` (hard, soft) and
        `ignore_result`, as Celery's config sets them."""
        self.default = TaskOptions(*time_limits, ignore_result)
        self.tasks = dict(tasks or {})
        host = socket.gethostname()
        self.origin = origin or f"bridge{os.getpid()}@{host}"
        # Celery puts the sending thread's oid here; only the RPC result backend reads it.
        self.reply_to = str(uuid.uuid3(uuid.NAMESPACE_OID, self.origin))
        self._origin = json.dumps(self.origin)
        self._reply_to = json.dumps(self.reply_to)
        self._rendered: dict[str, tuple[str, str]] = {}

    @classmethod
    def for_tasks(cls, celery_app: Celery, names: Iterable[str]) -> MessageBuilder:
        """A builder stamping what `apply_async` would for each of these registered tasks."""
        conf = celery_app.conf
        return cls(
            (conf.task_time_limit, conf.task_soft_time_limit),
            ignore_result=bool(conf.task_ignore_result),
            tasks={name: TaskOptions.of(celery_app.tasks[name]) for name in names},
        )

    def _options_of(self, task: str) -> tuple[str, str]:
        rendered = self._rendered.get(task)
        if rendered is None:
            rendered = self._rendered[task] = self.tasks.get(task, self.default).rendered()
        return rendered

    def build(self, call: TaskCall) -> str:
        """The message as kombu's Redis transport stores it.

        Written as text around the variable parts rather than through `json.dumps` of nested
        dicts: this runs once per message on the bridge's hot path. tests/test_messages.py holds
        it equal to what `apply_async` writes.
        """
        body = json.dumps([list(call.args), call.kwargs, _EMBED])
        task_id = _json_string(call.task_id)
        time_limits, ignore_result = self._options_of(call.task)
        return (
            f'{{"body": "{base64.b64encode(body.encode()).decode("ascii")}", '
            f'"content-encoding": "utf-8", "content-type": "application/json", '
            f'"headers": {{"lang": "py", "task": {_quoted(call.task)}, "id": {task_id}, '
            f'"shadow": null, "eta": null, "expires": null, "group": null, "group_index": null, '
            f'"retries": 0, "timelimit": {time_limits}, "root_id": {task_id}, '
            f'"parent_id": null, "argsrepr": {_json_string(argsrepr(call.args, ARGSREPR_MAX))}, '
            f'"kwargsrepr": {_json_string(argsrepr(call.kwargs, ARGSREPR_MAX))}, '
            f'"origin": {self._origin}, "ignore_result": {ignore_result}, '
            f'"replaced_task_nesting": 0, '
            f'"stamped_headers": null, "stamps": {{}}, "{SENT_AT_HEADER}": {time.time()!r}'
            f"{_extra_headers(call.headers)}}}, "
            f'"properties": {{"correlation_id": {task_id}, "reply_to": {self._reply_to}, '
            f'"delivery_mode": 2, "delivery_info": {{"exchange": "", '
            f'"routing_key": {_quoted(call.queue)}}}, "priority": 0, '
            f'"body_encoding": "base64", "delivery_tag": "{random_uuid()}"}}}}'
        )


def _extra_headers(headers: Mapping[str, Any] | None) -> str:
    if not headers:
        return ""
    return "".join(
        f", {_json_string(name)}: {json.dumps(value)}" for name, value in headers.items()
    )


_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def _formatted(raw: bytes) -> str:
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:32]}"


_json_string = encode_basestring_ascii
"""`json.dumps` of a str, without the encoder object around it."""


@lru_cache(maxsize=1024)
def _quoted(name: str) -> str:
    """A task or queue name as a JSON string: there are few, so each is encoded once."""
    return str(_json_string(name))


class _RandomPool:
    """Random bytes for uuid4s, fetched from the OS in bulk; emptied in a forked child so that
    parent and child never hand out the same bytes."""

    def __init__(self) -> None:
        self._bytes = b""
        self._used = 0
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._bytes, self._used = b"", 0

    def take16(self) -> bytearray:
        if self._used + 16 > len(self._bytes):
            self._bytes, self._used = os.urandom(RANDOM_POOL_BYTES), 0
        start = self._used
        self._used = start + 16
        return bytearray(self._bytes[start : start + 16])


_random = _RandomPool()


def random_uuid() -> str:
    """`str(uuid.uuid4())`, without building a UUID object."""
    raw = _random.take16()
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    return _formatted(bytes(raw))
