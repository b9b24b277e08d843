"""Replies to MQTT 5 requests: the contract between the bridge, which reads a request's Response
Topic and Correlation Data and publishes replies, and the workers, which decide what to reply.

A request's reply address travels in its task message under the header `taskhub_reply`. A worker
never talks MQTT: it adds its reply to the outbox stream in Redis in the same transaction as the
task's effect, and a bridge publishes it from there (docs/requests.md).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from redis.client import Pipeline

REPLY_HEADER = "taskhub_reply"
"""Task message header: the request's reply address, `ReplyAddress.header()`."""
STATUS_PROPERTY = "taskhub-status"
"""MQTT 5 user property on every reply: a `ReplyStatus` value."""
CONTENT_TYPE = "application/json"


class ReplyStatus(StrEnum):
    """What a reply says happened. Values are on the wire: never change one."""

    OK = "ok"
    """The task's effect committed (now, or by an earlier copy); the payload is its result."""
    FAILED = "failed"
    """The task failed for good; the payload is an error document."""
    REFUSED = "refused"
    """The bridge dead-lettered the request; the payload is an error document."""


@dataclass(frozen=True, slots=True)
class ReplyAddress:
    """Where a reply goes: an MQTT 5 Response Topic and the request's Correlation Data."""

    topic: str
    correlation: bytes | None = None

    def header(self) -> dict[str, str | None]:
        correlation = self.correlation
        return {
            "topic": self.topic,
            "correlation": None if correlation is None else base64.b64encode(correlation).decode(),
        }

    @classmethod
    def from_header(cls, value: object) -> ReplyAddress | None:
        """The address a task message's header holds; None for a missing or malformed one (a
        task sent by `.delay()` has none, and a bad header must not fail the task)."""
        if not isinstance(value, Mapping):
            return None
        topic, correlation = value.get("topic"), value.get("correlation")
        if not isinstance(topic, str) or not topic:
            return None
        if correlation is None:
            return cls(topic)
        if not isinstance(correlation, str):
            return None
        try:
            return cls(topic, base64.b64decode(correlation, validate=True))
        except (binascii.Error, ValueError):
            return None


@dataclass(frozen=True, slots=True)
class Reply:
    """One reply to publish: QoS 1, Content Type JSON, the status as a user property."""

    address: ReplyAddress
    status: ReplyStatus
    payload: bytes
    """The result as JSON, or an `error_document`."""
    user_properties: tuple[tuple[str, str], ...] = ()
    """More user properties besides the status, e.g. `traceparent`."""

    def entry(self) -> dict[str, str]:
        """The reply as outbox stream fields."""
        return {
            "address": json.dumps(self.address.header()),
            "status": self.status.value,
            "payload": base64.b64encode(self.payload).decode(),
            "properties": json.dumps(self.user_properties),
        }

    @classmethod
    def from_entry(cls, fields: Mapping[bytes | str, bytes | str]) -> Reply:
        """A reply read back from the outbox; ValueError for an entry this version cannot read."""

        def text(name: str) -> str:
            value = fields.get(name, fields.get(name.encode()))
            if value is None:
                raise ValueError(f"reply entry has no {name!r}")
            return value.decode() if isinstance(value, bytes) else value

        address = ReplyAddress.from_header(json.loads(text("address")))
        if address is None:
            raise ValueError("reply entry has a malformed address")
        properties = tuple((str(k), str(v)) for k, v in json.loads(text("properties")))
        return cls(
            address,
            ReplyStatus(text("status")),
            base64.b64decode(text("payload")),
            properties,
        )


def error_document(reason: str, detail: str, task_id: str | None = None) -> bytes:
    """The payload of a FAILED or REFUSED reply (documented in docs/requests.md)."""
    error: dict[str, Any] = {"reason": reason, "detail": detail, "task_id": task_id}
    return json.dumps({"error": error}).encode()


def add_reply(pipe: Pipeline, stream: str, fields: Mapping[str, str], maxlen: int) -> None:
    """Queue one reply's XADD to the outbox (`redis_keys.reply_outbox`) on `pipe`, to land with the
    rest of its transaction: `fields` are `Reply.entry()`, the stream capped at `maxlen`
    (TASKHUB_REPLIES__OUTBOX_MAXLEN; approximately: Redis trims whole nodes). Every writer of the
    outbox comes through here, so none can forget the cap."""
    pipe.xadd(stream, dict(fields), maxlen=maxlen, approximate=True)  # type: ignore[arg-type]
