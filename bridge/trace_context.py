"""A message's W3C trace context, from its MQTT 5 user properties `traceparent` and `tracestate`
(the W3C "Trace Context: MQTT" draft): where the bridge's span for it continues the publisher's
trace. Read only while tracing is on (docs/tracing.md, "At the bridge").

Only strings are picked out here; the propagator that starts the span checks their format, and
starts a new trace for a malformed `traceparent`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bridge.bulk_client import properties_naming
from taskhub.tracing import TRACEPARENT, TRACESTATE

_TRACEPARENT_BYTES = TRACEPARENT.encode()


def from_raw_properties(raw: bytes) -> dict[str, str] | None:
    """From a PUBLISH's raw MQTT 5 properties, decoded only when they may name `traceparent`."""
    properties = properties_naming(raw, _TRACEPARENT_BYTES)
    return None if properties is None else from_properties(properties)


def from_properties(properties: Mapping[str, Any]) -> dict[str, str] | None:
    """From MQTT 5 properties as paho names them (`UserProperty`: a list of name, value pairs).

    None without exactly one `traceparent`: two are ambiguous, so the bridge starts a trace of
    its own. Several `tracestate` properties are one list, joined as HTTP joins repeated headers.
    """
    parents: list[str] = []
    states: list[str] = []
    for pair in properties.get("UserProperty") or ():
        match pair:
            case [str(name), str(value)] if name == TRACEPARENT:
                parents.append(value)
            case [str(name), str(value)] if name == TRACESTATE:
                states.append(value)
    if len(parents) != 1:
        return None
    if states:
        return {TRACEPARENT: parents[0], TRACESTATE: ",".join(states)}
    return {TRACEPARENT: parents[0]}
