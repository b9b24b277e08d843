"""An OTLP/HTTP trace receiver on a free loopback port, for tests and benchmarks that run taskhub
processes with OTEL_EXPORTER_OTLP_ENDPOINT pointing at it: it keeps each span as a `SpanView`, or
only counts them (a benchmark's receiver should cost little)."""

from __future__ import annotations

import gzip
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


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


class OtlpReceiver:
    """An OTLP/HTTP trace receiver on 127.0.0.1 (`POST /v1/traces`, protobuf), keeping every
    span it is sent."""

    def __init__(self, keep: bool = True) -> None:
        self.keep = keep
        self.requests = 0
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
        with self._lock:
            self.requests += 1
        if not self.keep:
            return
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
