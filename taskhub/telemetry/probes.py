"""The small HTTP server a bridge or worker answers probes on: `/metrics` for Prometheus,
`/healthz` (the process's loop is turning) and `/readyz` (it can take work now).

It runs in a thread of its own (a greenlet in a gevent worker), so a busy or stuck main loop
cannot keep it from answering; what it answers comes from the callables it was given.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

log = logging.getLogger("taskhub.telemetry")


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    why: str = "ok"


Check = Callable[[], Verdict]


class ProbeServer:
    """Serves `metrics()` on /metrics and the `healthy()` and `ready()` verdicts (200 or 503)."""

    def __init__(
        self, address: str, port: int, metrics: Callable[[], bytes], healthy: Check, ready: Check
    ) -> None:
        self.routes: dict[str, Callable[[], tuple[int, str, bytes]]] = {
            "/metrics": lambda: (200, CONTENT_TYPE_LATEST, metrics()),
            "/healthz": lambda: _verdict(healthy()),
            "/readyz": lambda: _verdict(ready()),
        }
        try:
            self.server = ThreadingHTTPServer((address, port), self._handler())
        except OSError as error:
            raise SystemExit(
                f"taskhub: cannot serve probes on {address}:{port} ({error.strerror}); set "
                "TASKHUB_TELEMETRY__BRIDGE_PORT or TASKHUB_TELEMETRY__WORKER_PORT to a free port, "
                "or 0 to turn the probes off"
            ) from None
        self.server.daemon_threads = True
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="taskhub-probes", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> ProbeServer:
        self._thread.start()
        log.info("probes: /metrics /healthz /readyz on port %d", self.port)
        return self

    def stop(self) -> None:
        if self._thread.is_alive():  # shutdown() waits forever for a loop that never ran
            self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        routes = self.routes

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                route = routes.get(self.path.split("?", 1)[0])
                if route is None:
                    status, kind, body = (
                        404,
                        "text/plain",
                        b"not found: /metrics /healthz /readyz\n",
                    )
                else:
                    try:
                        status, kind, body = route()
                    except Exception as error:  # a probe that cannot answer is a failing probe
                        status, kind = 503, "text/plain; charset=utf-8"
                        body = f"probe failed: {type(error).__name__}: {error}\n".encode()
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # scraped every few seconds: not worth a log line each

        return Handler


def _verdict(verdict: Verdict) -> tuple[int, str, bytes]:
    return (200 if verdict.ok else 503), "text/plain; charset=utf-8", f"{verdict.why}\n".encode()
