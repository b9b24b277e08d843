"""Tracing in tests: a tracer provider of the test's own, exporting to memory.

opentelemetry lets a process set its global provider once, so tests never do: they hand their
provider to what they test (the bridge's MessageSpans, CeleryInstrumentor's `tracer_provider`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

TRACEPARENT_FORMAT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")

PUBLISHER_TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
PUBLISHER_SPAN_ID = 0xB7AD6B7169203331
PUBLISHER_TRACEPARENT = f"00-{PUBLISHER_TRACE_ID:032x}-{PUBLISHER_SPAN_ID:016x}-01"
"""A device's publish span, as the W3C draft's example writes it."""
PUBLISHER_TRACESTATE = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"


def in_memory_tracing() -> tuple[TracerProvider, InMemorySpanExporter]:
    """A provider whose spans, once ended, are in the exporter at once."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


@dataclass(frozen=True)
class Traceparent:
    trace_id: int
    parent_id: int
    flags: int

    @classmethod
    def parse(cls, text: str) -> Traceparent:
        found = TRACEPARENT_FORMAT.fullmatch(text)
        assert found, f"not a version 00 traceparent: {text!r}"
        trace_id, parent_id, flags = found.groups()
        return cls(int(trace_id, 16), int(parent_id, 16), int(flags, 16))
