"""A local stand-in for the short-link and venue HTTP services, with latency and errors on demand.

`GET /s/<code>` redirects to `/v/<slug>/<venue_id>`; `GET /v2/venues/<venue_id>` answers JSON.
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from taskhub.demo.venues import venue_for_code, venue_for_id
from taskhub.settings import StandinSettings

log = logging.getLogger("taskhub.standin")

_SHORT = re.compile(r"^/s/([A-Za-z0-9]{4,16})$")
_VENUE = re.compile(r"^/v2/venues/([A-Za-z0-9]{6,32})$")
_JITTER = (0.5, 1.5)


class StandinServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, settings: StandinSettings) -> None:
        self.settings = settings
        self.requests_served = 0
        self._lock = threading.Lock()
        super().__init__((settings.host, settings.port), _Handler)

    def count(self) -> None:
        with self._lock:
            self.requests_served += 1


class _Handler(BaseHTTPRequestHandler):
    server: StandinServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        settings = self.server.settings
        self.server.count()
        if self.path == "/health":
            self._send(200, {"status": "ok"})
            return
        if settings.latency_ms:
            time.sleep(settings.latency_ms / 1000 * random.uniform(*_JITTER))
        if settings.error_rate and random.random() < settings.error_rate:
            self._send(503, {"meta": {"code": 503, "errorType": "server_error"}})
            return
        if short := _SHORT.match(self.path):
            venue = venue_for_code(short.group(1))
            host = self.headers.get("host", f"{settings.host}:{settings.port}")
            self._send(301, None, location=f"http://{host}/v/{venue.slug}/{venue.venue_id}")
        elif (wanted := _VENUE.match(self.path)) and (found := venue_for_id(wanted.group(1))):
            self._send(200, {"meta": {"code": 200}, "response": {"venue": found.as_api_document()}})
        else:
            self._send(404, {"meta": {"code": 404, "errorType": "not_found"}})

    def _send(self, status: int, document: object, location: str | None = None) -> None:
        body = b"" if document is None else json.dumps(document).encode()
        self.send_response(status)
        if location:
            self.send_header("location", location)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: one line per request would drown the demo's output."""


def serve(settings: StandinSettings) -> None:
    """Serve until interrupted."""
    server = StandinServer(settings)
    log.info(
        "stand-in listening on http://%s:%d (latency %gms, error rate %g)",
        settings.host,
        server.server_address[1],
        settings.latency_ms,
        settings.error_rate,
    )
    try:
        server.serve_forever()
    finally:
        server.server_close()
