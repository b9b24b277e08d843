"""Seeing the spans taskhub makes: in this process (an in-memory exporter), or sent by another
process over OTLP/HTTP (rig/otlp.py), both as `SpanView`s, and the shape one check-in's trace
should have (docs/tracing.md).

opentelemetry takes one global tracer provider per process, so a test never installs its own:
`in_memory_tracing()` starts taskhub's tracing with an in-memory exporter and stops it after, and
taskhub's spans follow whichever provider is current (`taskhub.tracing.tracer()`).

Tests of the bridge alone hand a provider of their own (`private_provider()`) to what they test
(the bridge's MessageSpans, CeleryInstrumentor's `tracer_provider`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from rig.otlp import SpanView

if TYPE_CHECKING:
    import pytest
    from opentelemetry.sdk.trace import ReadableSpan

TASK_SPAN = "run/tasks.checkins.resolve_checkin"
PRODUCER_SPAN = "apply_async/tasks.checkins.resolve_checkin"
HTTP_SPAN = "GET"
RATE_LIMIT_SPAN = "rate_limit.wait"
CACHE_SPAN = "cache.lookup"
RATE_LIMIT = 1000
"""Requests per second given to each stand-in host, so each call takes a rate-limit turn."""


def from_sdk(spans: Iterable[ReadableSpan]) -> list[SpanView]:
    views = []
    for span in spans:
        context = span.context
        assert context is not None
        views.append(
            SpanView(
                name=span.name,
                trace_id=f"{context.trace_id:032x}",
                span_id=f"{context.span_id:016x}",
                parent_id=None if span.parent is None else f"{span.parent.span_id:016x}",
                service=str(span.resource.attributes.get("service.name", "")),
                attributes=dict(span.attributes or {}),
            )
        )
    return views


@contextmanager
def in_memory_tracing() -> Iterator[InMemorySpanExporter]:
    """Trace this process as a worker does (tasks, their producers, urllib3), into memory."""
    from taskhub import tracing, worker_tracing
    from taskhub.settings import get_settings

    assert not tracing.enabled(), "tracing was left on by an earlier test"
    exporter = InMemorySpanExporter()
    assert worker_tracing.begin(get_settings(), exporter=exporter)
    try:
        yield exporter
    finally:
        worker_tracing.end()


@dataclass(frozen=True)
class CheckinTrace:
    """One check-in task's spans, found by its task id."""

    task: SpanView
    http: list[SpanView]
    rate_limit: list[SpanView]
    cache: list[SpanView]
    trace: list[SpanView]
    """Every span of the task's trace."""


def find_checkin_trace(spans: Sequence[SpanView], task_id: str) -> CheckinTrace | None:
    """The trace of the check-in task `task_id`, once its task span has ended."""
    tasks = [
        s
        for s in spans
        if s.name == TASK_SPAN and s.attributes.get("messaging.message.id") == task_id
    ]
    if not tasks:
        return None
    assert len(tasks) == 1, f"task {task_id} ran more than once: {tasks}"
    task = tasks[0]
    trace = [s for s in spans if s.trace_id == task.trace_id]
    children = [s for s in trace if s.parent_id == task.span_id]
    return CheckinTrace(
        task=task,
        http=[s for s in children if s.name == HTTP_SPAN],
        rate_limit=[s for s in children if s.name == RATE_LIMIT_SPAN],
        cache=[s for s in children if s.name == CACHE_SPAN],
        trace=trace,
    )


def complete(trace: CheckinTrace | None) -> CheckinTrace | None:
    """`trace` once its two HTTP calls are in too (exporters may send them in another batch)."""
    return trace if trace is not None and len(trace.http) == 2 else None


def assert_task_subtree(trace: CheckinTrace, tweet_id: str, ports: tuple[int, int]) -> None:
    """Under the task span: two GETs (short link, then venue), each after its rate-limit turn,
    and a cache lookup (miss) before each."""
    from taskhub.tracing import TWEET_ID

    assert trace.task.service == "taskhub-worker"
    assert trace.task.attributes[TWEET_ID] == tweet_id
    assert all(s.attributes["server.address"] == "127.0.0.1" for s in trace.http)
    status = {s.attributes["server.port"]: s.attributes["http.status_code"] for s in trace.http}
    short, venue = ports
    assert status.keys() == {short, venue}
    assert (300 <= status[short] < 400, status[venue]) == (True, 200)  # a redirect, a venue
    assert all(s.attributes["http.method"] == "GET" for s in trace.http)
    assert len(trace.rate_limit) == 2
    assert all(s.attributes["taskhub.rate_limit.wait_seconds"] >= 0 for s in trace.rate_limit)
    kinds = {
        s.attributes["taskhub.cache.kind"]: s.attributes["taskhub.cache.hit"] for s in trace.cache
    }
    assert kinds == {"shortlink": False, "venue": False}
    assert {s.trace_id for s in trace.trace} == {trace.task.trace_id}


def limit_every_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """A shared rate limit for every host, in this process (whose settings are read once), so
    each HTTP call gets a `rate_limit.wait` span; a worker process gets TASKHUB_HTTP__HOSTS."""
    from taskhub.settings import HostPolicy, HttpSettings

    policy = HostPolicy(rate_limit=RATE_LIMIT)
    monkeypatch.setattr(HttpSettings, "policy", lambda self, host: policy)


TRACEPARENT_FORMAT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")

PUBLISHER_TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
PUBLISHER_SPAN_ID = 0xB7AD6B7169203331
PUBLISHER_TRACEPARENT = f"00-{PUBLISHER_TRACE_ID:032x}-{PUBLISHER_SPAN_ID:016x}-01"
"""A device's publish span, as the W3C draft's example writes it."""
PUBLISHER_TRACESTATE = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"


def private_provider() -> tuple[TracerProvider, InMemorySpanExporter]:
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
