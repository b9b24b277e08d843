"""A message's own publish time, where it carries one: what
`taskhub_bridge_publish_to_landed_seconds` measures from.

The convention (docs/observability.md): epoch seconds, as a number or a numeric string, in the
MQTT 5 user property `sent_at`, or else in a top-level `sent_at` field of the JSON payload. Anything
else there is ignored: a bad publisher clock must never cost a message.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from bridge.bulk_client import properties_naming

SENT_AT = "sent_at"
_SENT_AT_BYTES = SENT_AT.encode()


def epoch_seconds(value: object) -> float | None:
    """`value` as epoch seconds, or None when it is not a positive finite number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) and number > 0 else None


def from_raw_properties(raw: bytes) -> float | None:
    """From a PUBLISH's raw MQTT 5 properties, decoded only when they may name `sent_at`."""
    properties = properties_naming(raw, _SENT_AT_BYTES)
    return None if properties is None else from_properties(properties)


def from_properties(properties: Mapping[str, Any]) -> float | None:
    """From MQTT 5 properties as paho names them (`UserProperty`: a list of name, value pairs)."""
    for pair in properties.get("UserProperty") or ():
        match pair:
            case [name, value] if name == SENT_AT:
                return epoch_seconds(value)
    return None


def from_payload(document: object) -> float | None:
    """From a decoded JSON payload's top-level `sent_at` field."""
    if not isinstance(document, dict):
        return None
    value = document.get(SENT_AT)
    return None if value is None else epoch_seconds(value)
