"""Dead letters: a message the bridge could not turn into a task, kept with the reason why.

They are acked (never redelivered forever) and stored in a capped Redis stream for inspection.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

DEFAULT_STREAM_MAXLEN = 100_000


class Reason(StrEnum):
    PAYLOAD_TOO_LARGE = "payload_too_large"
    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"
    SCHEMA = "schema"
    NO_ROUTE = "no_route"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    topic: str
    payload: bytes
    reason: Reason
    detail: str
    route: str | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def as_stream_fields(self) -> dict[str, str]:
        """Flat string fields for XADD; payload bytes kept exactly (base64 where not UTF-8)."""
        try:
            payload, encoding = self.payload.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            payload, encoding = base64.b64encode(self.payload).decode("ascii"), "base64"
        return {
            "topic": self.topic,
            "payload": payload,
            "payload_encoding": encoding,
            "reason": self.reason.value,
            "detail": self.detail,
            "route": self.route or "",
            "received_at": self.received_at.isoformat(),
            "properties": json.dumps(self.properties, default=str),
        }


def stream_key(key_prefix: str) -> str:
    return f"{key_prefix}:deadletters"
