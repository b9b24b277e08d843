"""Seeing the spans taskhub makes: in this process (an in-memory exporter), or sent by another
process over OTLP/HTTP (a receiver on a free port), both as `SpanView`s, and the shape one
check-in's trace should have (docs/tracing.md).

opentelemetry takes one global tracer provider per process, so a test never installs its own:
`in_memory_tracing()` starts taskhub's tracing with an in-memory exporter and stops it after, and
taskhub's spans follow whichever provider is current (`taskhub.tracing.tracer()`).
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

TASK_SPAN = "run/tasks.checkins.resolve_checkin"
PRODUCER_SPAN = "apply_async/tasks.checkins.resolve_checkin"
HTTP_SPAN = "GET"
RATE_LIMIT_SPAN = "rate_limit.wait"
CACHE_SPAN = "cache.lookup"


@dataclass(frozen=True)
class SpanView:
    """What the tests look at in a span, wherever it was exported from."""

    name: str
    trace_id: str
    """32 hex digits."""
    span_id: str
    """16 hex digits."""
    parent_id: str | None
    service: str
    attributes: dict[str, Any] = field(default_factory=dict)


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
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from taskhub import tracing, worker_tracing
    from taskhub.settings import get_settings

    assert not tracing.enabled(), "tracing was left on by an earlier test"
    exporter = InMemorySpanExporter()
    assert worker_tracing.begin(get_settings(), exporter=exporter)
    try:
        yield exporter
    finally:
        worker_tracing.end()


class OtlpReceiver:
    """An OTLP/HTTP trace receiver on 127.0.0.1 (`POST /v1/traces`, protobuf), keeping every
    span it is sent."""

    def __init__(self) -> None:
        self._spans: list[SpanView] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                receiver.receive(body)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        """For OTEL_EXPORTER_OTLP_ENDPOINT (the exporter adds /v1/traces)."""
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def receive(self, body: bytes) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        request = ExportTraceServiceRequest.FromString(body)
        views = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    views.append(
                        SpanView(
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex() or None,
                            service=str(resource.get("service.name", "")),
                            attributes={a.key: _value(a.value) for a in span.attributes},
                        )
                    )
        with self._lock:
            self._spans.extend(views)

    def spans(self) -> list[SpanView]:
        with self._lock:
            return list(self._spans)


def _value(value: Any) -> Any:
    """An OTLP AnyValue as Python (the scalar kinds taskhub's spans use)."""
    kind = value.WhichOneof("value")
    return None if kind is None else getattr(value, kind)


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
