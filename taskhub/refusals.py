"""The worker's consumer: it dead-letters the messages Celery refuses, not only logs them.

Celery drops a message it must not run (a pickled body where only JSON is accepted, a task name it
does not know, a malformed message) after one log line. Here each is kept in the dead-letter stream
first, bytes and headers included, so nothing vanishes unseen. Enabled by `worker_consumer` in
celeryconfig.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import redis
from celery.worker.consumer import Consumer
from kombu.exceptions import ContentDisallowed
from kombu.message import Message

from taskhub.deadletters import DeadLetter, FailedTask, Reason, deadletter_stream
from taskhub.telemetry.deadletter_log import log_dead_letter

log = logging.getLogger("taskhub.worker")


def refused_letter(message: Message, reason: Reason, error: BaseException | None) -> DeadLetter:
    """A letter holding the refused message exactly: raw body bytes, headers, properties."""
    headers = dict(message.headers or {})
    delivery_info = dict(getattr(message, "delivery_info", None) or {})
    queue = str(delivery_info.get("routing_key") or "")
    body = message.body if isinstance(message.body, bytes) else str(message.body).encode()
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    if message.content_type == "application/json":
        try:
            decoded = json.loads(body)
            args, kwargs = list(decoded[0]), dict(decoded[1])
        except (ValueError, TypeError, KeyError, IndexError):
            pass
    detail = f"{type(error).__name__}: {error}" if error is not None else "unknown message format"
    return DeadLetter(
        reason,
        f"{detail} (content-type {message.content_type})",
        payload=body,
        route=queue or None,
        properties={"headers": headers, "content_type": message.content_type},
        task=FailedTask(
            name=str(headers.get("task") or ""),
            task_id=str(headers.get("id") or ""),
            queue=queue,
            args=args,
            kwargs=kwargs,
        ),
    )


class RecordingConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer, recording every refused message as a dead letter before dropping it."""

    def _record(self, message: Message, reason: Reason, error: BaseException | None) -> None:
        try:
            letter = refused_letter(message, reason, error)
            log_dead_letter(letter, deadletter_stream().add(letter))
        except redis.RedisError as failure:
            log.error("refused a message and could not dead-letter it: %s", failure)

    def on_decode_error(self, message: Message, exc: BaseException) -> None:
        self._record(message, _reason_for(exc, Reason.INVALID_TASK), exc)
        super().on_decode_error(message, exc)

    def on_invalid_task(self, body: Any, message: Message, exc: BaseException) -> None:
        self._record(message, _reason_for(exc, Reason.INVALID_TASK), exc)
        super().on_invalid_task(body, message, exc)

    def on_unknown_task(self, body: Any, message: Message, exc: BaseException) -> None:
        self._record(message, Reason.UNKNOWN_TASK, exc)
        super().on_unknown_task(body, message, exc)

    def on_unknown_message(self, body: Any, message: Message) -> None:
        self._record(message, Reason.INVALID_TASK, None)
        super().on_unknown_message(body, message)


def _reason_for(error: BaseException, otherwise: Reason) -> Reason:
    return Reason.CONTENT_DISALLOWED if isinstance(error, ContentDisallowed) else otherwise
