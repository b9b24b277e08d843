"""Where a traced contestant exports its spans: an OTLP/HTTP endpoint that takes every trace
export, counts its spans and keeps nothing, so tracing is measured with its real export path
(batching, protobuf encoding, HTTP) without a collector's own cost on the machine.

    python -m bench.otlp_sink PORT

Prints `otlp sink ready` once listening, then `spans N` (the running total) after each export.
"""

from __future__ import annotations

import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

READY = "otlp sink ready"
SPANS = "spans "


class _Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # the exporter keeps its connection
    spans = 0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        request = ExportTraceServiceRequest.FromString(body)
        _Sink.spans += sum(
            len(scoped.spans)
            for resource in request.resource_spans
            for scoped in resource.scope_spans
        )
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()
        print(f"{SPANS}{_Sink.spans}", flush=True)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: one line per export is printed above."""


def main() -> int:
    server = HTTPServer(("127.0.0.1", int(sys.argv[1])), _Sink)
    print(READY, flush=True)
    server.serve_forever()
    return 0


def spans_received(output: str) -> int:
    """The last running total the sink printed."""
    totals = [line for line in output.splitlines() if line.startswith(SPANS)]
    return int(totals[-1].removeprefix(SPANS)) if totals else 0


if __name__ == "__main__":
    sys.exit(main())
