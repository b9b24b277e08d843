"""Local stand-ins for the short-link service and the venue API, so tests and benchmarks meet real
upstream behaviour (slow tail, ETags, rate limit, faults) from a server that never holds them up.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import hashlib
import json
import logging
import math
import os
import random
import re
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from http import HTTPStatus
from typing import Any, cast

from taskhub.demo.venues import venue_for_code, venue_for_id
from taskhub.settings import StandinSettings

log = logging.getLogger("taskhub.standin")

JITTER = (0.5, 1.5)
"""Each request's latency is `latency_ms` times a uniform factor in this range."""
RATE_WINDOW_SECONDS = 1.0
"""The rate limit's moving window."""
DEFAULT_FAULT_STATUS = 503
DEFAULT_RETRY_AFTER = 1
"""Seconds a throttle fault's 429 asks the client to wait, unless it names its own."""
MAX_HEAD_BYTES = 16 * 1024
"""A request line and headers longer than this are refused (431) and the connection closed."""
MAX_BODY_BYTES = 64 * 1024
MAX_BUFFERED_BYTES = 256 * 1024
"""Pipelined bytes held while a response waits out its latency; past this, reading pauses."""
START_TIMEOUT = 10.0
"""Seconds `start()`, `stop()` and a fault set from another thread wait for the server's loop."""
ETAG_HEX_CHARS = 16
VENUE_CACHE_SIZE = 65_536
"""Venue documents kept encoded with their ETag: a benchmark asks for the same ones again."""
LISTEN_BACKLOG = 1024
DRAIN_QUIET_SECONDS = 0.5
"""Told to stop, the stand-in answers on until no request has come or waited this long..."""
DRAIN_MAX_SECONDS = 3.0
"""...or for this long at most: an upstream outlives the workers' stop (within honcho's 5 s)."""
DRAIN_POLL_SECONDS = 0.05

_SHORT = re.compile(r"^/s/([A-Za-z0-9]{4,16})$")
_VENUE = re.compile(r"^/v2/venues/([A-Za-z0-9]{6,32})$")
_CONTROL = "/_standin/"
_REASONS = {status.value: status.phrase for status in HTTPStatus}
_NOT_FOUND = json.dumps({"meta": {"code": 404, "errorType": "not_found"}}).encode()
_RATE_LIMITED = json.dumps({"meta": {"code": 429, "errorType": "rate_limit_exceeded"}}).encode()
_NOT_ALLOWED = json.dumps({"meta": {"code": 405, "errorType": "method_not_allowed"}}).encode()

Headers = list[tuple[str, str]]


class Service(StrEnum):
    SHORTLINK = "shortlink"
    VENUE = "venue"


class FaultKind(StrEnum):
    ERRORS = "errors"
    """Every request of the service is answered with the fault's status."""
    OUTAGE = "outage"
    """Every request of the service has its connection closed unanswered."""
    THROTTLE = "throttle"
    """Every request of the service is answered 429 with the fault's Retry-After."""


@dataclass(frozen=True, slots=True)
class Fault:
    kind: FaultKind
    until: float
    """`time.monotonic()` at which the fault ends."""
    status: int = DEFAULT_FAULT_STATUS
    retry_after: int = DEFAULT_RETRY_AFTER


@dataclass(slots=True)
class ServiceStats:
    """What one service has answered since the start or the last reset."""

    requests: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    over_limit: int = 0
    """429s the rate limiter answered."""
    throttled: int = 0
    """429s a throttle fault answered."""
    not_modified: int = 0
    closed: int = 0
    """Requests an outage fault closed unanswered."""
    in_flight: int = 0
    max_in_flight: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "by_status": {str(status): n for status, n in sorted(self.by_status.items())},
            "over_limit": self.over_limit,
            "throttled": self.throttled,
            "not_modified": self.not_modified,
            "closed": self.closed,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
        }

    def reset(self) -> None:
        """Zero every counter; requests still waiting out their latency stay in flight."""
        self.requests = self.over_limit = self.throttled = self.not_modified = self.closed = 0
        self.by_status = {}
        self.max_in_flight = self.in_flight


@dataclass(frozen=True, slots=True)
class Quota:
    """One rate-limit decision, with what the X-RateLimit headers say."""

    allowed: bool
    remaining: int
    frees_in: float
    """Seconds until the oldest request in the window leaves it."""


class SlidingWindowLimit:
    """At most `limit` requests per client in any window of `window` seconds: a strict moving
    window over the times of the requests it let through (refused ones do not count)."""

    def __init__(self, window: float = RATE_WINDOW_SECONDS) -> None:
        self.window = window
        self._seen: dict[bytes, deque[float]] = {}

    def take(self, client: bytes, limit: float, now: float) -> Quota:
        seen = self._seen.get(client)
        if seen is None:
            seen = self._seen[client] = deque()
        horizon = now - self.window
        while seen and seen[0] <= horizon:
            seen.popleft()
        allowed = len(seen) < limit
        if allowed:
            seen.append(now)
        remaining = max(0, math.ceil(limit - len(seen)))
        return Quota(allowed, remaining, seen[0] + self.window - now if seen else 0.0)


@dataclass(slots=True)
class _Request:
    method: str
    path: str
    headers: dict[bytes, bytes]
    body: bytes
    keep_alive: bool


@dataclass(slots=True)
class _Answer:
    data: bytes | None
    """The whole response; None closes the connection without answering."""
    keep_alive: bool = True
    delay: float = 0.0
    stats: ServiceStats | None = None
    """The service whose in-flight count this answer holds until it is written or abandoned."""


class _BadRequest(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@functools.lru_cache(maxsize=VENUE_CACHE_SIZE)
def _venue_document(venue_id: str) -> tuple[bytes, str] | None:
    """The venue API's body for this id and its ETag, or None for an unknown id."""
    venue = venue_for_id(venue_id)
    if venue is None:
        return None
    document = {"meta": {"code": 200}, "response": {"venue": venue.as_api_document()}}
    body = json.dumps(document).encode()
    return body, f'"{hashlib.sha256(body).hexdigest()[:ETAG_HEX_CHARS]}"'


@functools.lru_cache(maxsize=VENUE_CACHE_SIZE)
def _venue_path(code: str) -> str:
    venue = venue_for_code(code)
    return f"/v/{venue.slug}/{venue.venue_id}"


def _etag_matches(header: bytes | None, etag: str) -> bool:
    if not header:
        return False
    wanted = etag.encode()
    for candidate in header.split(b","):
        tag = candidate.strip()
        if tag == b"*" or tag.removeprefix(b"W/") == wanted:
            return True
    return False


def _json(document: object) -> bytes:
    return json.dumps(document).encode()


def _error(status: int, kind: str) -> bytes:
    return _json({"meta": {"code": status, "errorType": kind}})


def _render(status: int, body: bytes | None, headers: Headers, keep_alive: bool) -> bytes:
    """The response's bytes; a None body (304) sends no Content-Length and no body."""
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}"]
    if body is not None:
        lines.append("Content-Type: application/json")
        lines.append(f"Content-Length: {len(body)}")
    lines.extend(f"{name}: {value}" for name, value in headers)
    if not keep_alive:
        lines.append("Connection: close")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1") + (body or b"")


def _parse_head(head: bytes) -> tuple[str, str, dict[bytes, bytes], bool]:
    """Method, path (query dropped), lower-cased headers and keep-alive of one request head."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[1].startswith(b"/"):
        raise _BadRequest(400, "malformed request line")
    method, target, version = parts
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise _BadRequest(400, "only HTTP/1.0 and HTTP/1.1 are served")
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise _BadRequest(400, "malformed header line")
        headers[name.lower()] = value.strip()
    connection = headers.get(b"connection", b"").lower()
    if version == b"HTTP/1.1":
        keep_alive = b"close" not in connection
    else:
        keep_alive = b"keep-alive" in connection
    path = target.decode("latin-1").partition("?")[0]
    return method.decode("ascii"), path, headers, keep_alive


class _Connection(asyncio.Protocol):
    """One client connection: parses requests in order and writes each answer after its latency;
    pipelined requests wait their turn, so answers go out in request order."""

    def __init__(self, server: StandinServer, service: Service) -> None:
        self._server = server
        self._service = service
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiting: asyncio.Task[None] | None = None
        self._write_blocked = False
        self._reading_paused = False
        self._closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._server._connections.add(self)  # noqa: SLF001  (its own server, in this module)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._server._connections.discard(self)  # noqa: SLF001  (its own server)
        if self._waiting is not None:
            self._waiting.cancel()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._process()

    def pause_writing(self) -> None:
        self._write_blocked = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_blocked = False
        self._process()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _process(self) -> None:
        while self._waiting is None and not self._write_blocked and not self._closed:
            try:
                request = self._next_request()
            except _BadRequest as error:
                self._refuse(error)
                return
            if request is None:
                break
            answer = self._server._answer(self._service, request)  # noqa: SLF001  (its own server)
            if answer.delay > 0:
                self._waiting = asyncio.get_running_loop().create_task(self._deliver_later(answer))
            else:
                self._deliver(answer)
        self._update_reading()

    def _next_request(self) -> _Request | None:
        buffer = self._buffer
        while buffer[:2] == b"\r\n":  # RFC 9112 2.2: ignore empty lines before a request
            del buffer[:2]
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > MAX_HEAD_BYTES:
                raise _BadRequest(431, "request head too large")
            return None
        if end > MAX_HEAD_BYTES:
            raise _BadRequest(431, "request head too large")
        method, path, headers, keep_alive = _parse_head(bytes(buffer[:end]))
        if b"transfer-encoding" in headers:
            raise _BadRequest(400, "only Content-Length bodies are served")
        length_text = headers.get(b"content-length", b"0")
        if not length_text.isdigit():
            raise _BadRequest(400, "malformed Content-Length")
        length = int(length_text)
        if length > MAX_BODY_BYTES:
            raise _BadRequest(413, "request body too large")
        start = end + 4
        if len(buffer) < start + length:
            return None
        body = bytes(buffer[start : start + length])
        del buffer[: start + length]
        return _Request(method, path, headers, body, keep_alive)

    def _refuse(self, error: _BadRequest) -> None:
        self._server._count_refusal(self._service, error.status)  # noqa: SLF001  (its own server)
        document = _json(
            {"meta": {"code": error.status, "errorType": "bad_request"}, "error": str(error)}
        )
        self._buffer.clear()
        self._deliver(_Answer(_render(error.status, document, [], keep_alive=False), False))

    async def _deliver_later(self, answer: _Answer) -> None:
        try:
            await asyncio.sleep(answer.delay)
        except asyncio.CancelledError:
            _release(answer)
            raise
        self._waiting = None
        self._deliver(answer)
        self._process()

    def _deliver(self, answer: _Answer) -> None:
        _release(answer)
        transport = self._transport
        if self._closed or transport is None:
            return
        if answer.data is not None:
            transport.write(answer.data)
        if answer.data is None or not answer.keep_alive:
            self._closed = True
            transport.close()

    def _update_reading(self) -> None:
        if self._transport is None or self._closed:
            return
        pause = self._write_blocked or len(self._buffer) > MAX_BUFFERED_BYTES
        if pause != self._reading_paused:
            self._reading_paused = pause
            if pause:
                self._transport.pause_reading()
            else:
                self._transport.resume_reading()


def _release(answer: _Answer) -> None:
    if answer.stats is not None:
        answer.stats.in_flight -= 1
        answer.stats = None


def _latency(settings: StandinSettings) -> float:
    """Seconds this request takes: the tail's, or the mean jittered."""
    if settings.tail_rate and random.random() < settings.tail_rate:
        return settings.tail_ms / 1000
    if settings.latency_ms:
        return settings.latency_ms / 1000 * random.uniform(*JITTER)
    return 0.0


def _fault_services(service: str) -> tuple[Service, ...]:
    if service == "both":
        return tuple(Service)
    try:
        return (Service(service),)
    except ValueError:
        raise ValueError(f"service must be shortlink, venue or both, not {service!r}") from None


def make_fault(
    kind: str,
    seconds: float,
    *,
    status: int = DEFAULT_FAULT_STATUS,
    retry_after: int = DEFAULT_RETRY_AFTER,
) -> Fault:
    """A validated fault lasting `seconds` from now; ValueError says what is wrong."""
    try:
        fault_kind = FaultKind(kind)
    except ValueError:
        raise ValueError(f"kind must be errors, outage or throttle, not {kind!r}") from None
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0:
        raise ValueError(f"seconds must be a positive number, not {seconds!r}")
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise ValueError(f"status must be an HTTP status 100-599, not {status!r}")
    if isinstance(retry_after, bool) or not isinstance(retry_after, int) or retry_after < 0:
        raise ValueError(f"retry_after must be a whole number of seconds, not {retry_after!r}")
    return Fault(fault_kind, time.monotonic() + seconds, status, retry_after)


class StandinServer:
    """Both stand-in services on one asyncio loop: in the CLI's main thread (`serve`), or in a
    daemon thread of a test (`start` / `stop`).

    On either port: `/health`; `POST /_standin/faults` (JSON: service, kind, seconds, status,
    retry_after) sets a fault, `DELETE` clears them all; `GET /_standin/stats`, and
    `POST /_standin/stats/reset`. These are not traffic: never counted, delayed or faulted, so
    the stand-in can be steered through an outage (which closes each request's connection).

    `settings` may be replaced while it runs (each request reads it). Counters are plain ints,
    safe to read from any thread; faults and resets from another thread run on the loop.
    """

    def __init__(self, settings: StandinSettings) -> None:
        self.settings = settings
        self._stats = {service: ServiceStats() for service in Service}
        self._faults: dict[Service, Fault] = {}
        self._limit = SlidingWindowLimit()
        self._connections: set[_Connection] = set()
        self._servers: list[asyncio.Server] = []
        self._ports: tuple[int, int] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._stopping: asyncio.Event | None = None
        self._draining: asyncio.Future[None] | None = None
        self._thread: threading.Thread | None = None

    # What tests and the CLI see.

    @property
    def ports(self) -> tuple[int, int]:
        """(short-link port, venue port) as listening: the free ones picked for a port of 0."""
        return self._ports or (self.settings.port, self.settings.venue_port)

    @property
    def stats(self) -> dict[str, dict[str, Any]]:
        return {service.value: stats.as_dict() for service, stats in self._stats.items()}

    @property
    def requests_served(self) -> int:
        """Real requests across both services (health and control requests are not counted)."""
        return sum(stats.requests for stats in self._stats.values())

    def set_fault(
        self,
        service: str,
        kind: str,
        seconds: float,
        *,
        status: int = DEFAULT_FAULT_STATUS,
        retry_after: int = DEFAULT_RETRY_AFTER,
    ) -> None:
        """Make `service` ("shortlink", "venue" or "both") fail as `kind` says for `seconds`."""
        services = _fault_services(service)
        fault = make_fault(kind, seconds, status=status, retry_after=retry_after)
        self._on_loop(lambda: self._faults.update(dict.fromkeys(services, fault)))

    def clear_faults(self) -> None:
        self._on_loop(self._faults.clear)

    def reset_stats(self) -> None:
        self._on_loop(self._reset_stats)

    def start(self) -> None:
        """Serve from a daemon thread; returns once both ports listen, raises if one cannot."""
        if self._thread is not None:
            raise RuntimeError("the stand-in is already running")
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._serve(ready),), name="standin", daemon=True
        )
        self._thread.start()
        try:
            ready.result(timeout=START_TIMEOUT)
        except BaseException:
            self._thread.join(START_TIMEOUT)
            self._thread = None
            raise

    def stop(self) -> None:
        """Close both ports and every connection, and end the thread `start` began."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None or loop is None or stopping is None:
            return
        loop.call_soon_threadsafe(stopping.set)
        thread.join(START_TIMEOUT)
        if thread.is_alive():
            raise TimeoutError(f"the stand-in did not stop within {START_TIMEOUT:g}s")
        self._thread = None

    async def run(self) -> None:
        """Serve until SIGINT or SIGTERM (the CLI), then until the requests in hand are answered.

        The demo stops everything at once; a stand-in that closed at once failed the tasks the
        stopping workers were finishing, and their failures opened the hosts' breakers in Redis
        for the next start. A second signal stops it at once.
        """
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        loop = asyncio.get_running_loop()
        serving = asyncio.ensure_future(self._serve(ready))
        await asyncio.wrap_future(ready)
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._drain_then_stop)
        await serving

    def _drain_then_stop(self) -> None:
        if self._draining is None:
            self._draining = asyncio.ensure_future(self._drain())
        else:
            self._request_stop()

    async def _drain(self) -> None:
        deadline = time.monotonic() + DRAIN_MAX_SECONDS
        seen, quiet_since = self.requests_served, time.monotonic()
        while time.monotonic() < deadline:
            now = time.monotonic()
            waiting = any(stats.in_flight for stats in self._stats.values())
            if waiting or self.requests_served != seen:
                seen, quiet_since = self.requests_served, now
            elif now - quiet_since >= DRAIN_QUIET_SECONDS:
                break
            await asyncio.sleep(DRAIN_POLL_SECONDS)
        self._request_stop()

    # The loop's side.

    async def _serve(self, ready: concurrent.futures.Future[None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._stopping = asyncio.Event()
        try:
            await self._listen()
        except Exception as error:
            ready.set_exception(error)
            return
        ready.set_result(None)
        try:
            await self._stopping.wait()
        finally:
            await self._close()

    def _request_stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        host = self.settings.host
        for service, port in (
            (Service.SHORTLINK, self.settings.port),
            (Service.VENUE, self.settings.venue_port),
        ):
            try:
                server = await loop.create_server(
                    functools.partial(_Connection, self, service),
                    host,
                    port,
                    reuse_address=True,
                    backlog=LISTEN_BACKLOG,
                    start_serving=False,
                )
            except OSError as error:
                await self._close()
                why = os.strerror(error.errno) if error.errno else str(error)
                raise OSError(
                    error.errno, f"stand-in cannot listen on {host}:{port} ({service}): {why}"
                ) from error
            self._servers.append(server)
        # Both at once: whoever finds one port answering may rely on the other.
        for server in self._servers:
            await server.start_serving()
        shortlink, venue = (server.sockets[0].getsockname()[1] for server in self._servers)
        self._ports = (int(shortlink), int(venue))
        settings = self.settings
        log.info(
            "stand-in listening on http://%s:%d (short links; latency %gms, error rate %g)",
            host,
            shortlink,
            settings.latency_ms,
            settings.error_rate,
        )
        log.info(
            "stand-in listening on http://%s:%d (venue API; rate limit %s, max-age %ds)",
            host,
            venue,
            f"{settings.rate_limit:g}/s per client" if settings.rate_limit else "off",
            settings.venue_max_age,
        )

    async def _close(self) -> None:
        for server in self._servers:
            server.close()
        for connection in list(self._connections):
            connection.abort()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()

    def _on_loop(self, change: Callable[[], object]) -> None:
        """Run `change` on the loop's thread, waiting for it when called from another thread."""
        loop = self._loop
        if loop is None or loop.is_closed() or threading.get_ident() == self._loop_thread:
            change()
            return
        done = threading.Event()

        def apply() -> None:
            try:
                change()
            finally:
                done.set()

        loop.call_soon_threadsafe(apply)
        if not done.wait(START_TIMEOUT):
            raise TimeoutError(f"the stand-in's loop did not respond within {START_TIMEOUT:g}s")

    def _reset_stats(self) -> None:
        for stats in self._stats.values():
            stats.reset()

    def _count_refusal(self, service: Service, status: int) -> None:
        stats = self._stats[service]
        stats.requests += 1
        stats.by_status[status] = stats.by_status.get(status, 0) + 1

    def _answer(self, service: Service, request: _Request) -> _Answer:
        path = request.path
        if path == "/health" or path.startswith(_CONTROL):
            return self._control(request)
        stats = self._stats[service]
        stats.requests += 1
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        try:
            return self._answer_traffic(service, stats, request)
        except Exception:
            log.exception("stand-in failed to answer %s %s", request.method, path)
            stats.in_flight -= 1
            return _Answer(_render(500, _error(500, "server_error"), [], False), False)

    def _answer_traffic(self, service: Service, stats: ServiceStats, request: _Request) -> _Answer:
        settings = self.settings
        now = time.monotonic()
        fault = self._faults.get(service)
        if fault is not None and fault.until <= now:
            del self._faults[service]
            fault = None
        if fault is not None and fault.kind is FaultKind.OUTAGE:
            stats.closed += 1
            return _Answer(None, keep_alive=False, stats=stats)
        headers: Headers = []
        body: bytes | None
        if request.method != "GET":
            status, body = 405, _NOT_ALLOWED
            headers.append(("Allow", "GET"))
        elif fault is not None and fault.kind is FaultKind.ERRORS:
            status, body = fault.status, _error(fault.status, "server_error")
        elif fault is not None:
            stats.throttled += 1
            status, body = 429, _RATE_LIMITED
            headers.append(("Retry-After", str(fault.retry_after)))
        elif service is Service.SHORTLINK:
            status, body = self._shortlink(request, settings, headers)
        else:
            status, body = self._venue(request, settings, stats, headers, now)
        stats.by_status[status] = stats.by_status.get(status, 0) + 1
        data = _render(status, body, headers, request.keep_alive)
        return _Answer(data, request.keep_alive, _latency(settings), stats)

    def _shortlink(
        self, request: _Request, settings: StandinSettings, headers: Headers
    ) -> tuple[int, bytes]:
        if settings.error_rate and random.random() < settings.error_rate:
            return 503, _error(503, "server_error")
        short = _SHORT.match(request.path)
        if short is None:
            return 404, _NOT_FOUND
        host = request.headers.get(b"host", b"").decode("latin-1")
        host = host or f"{settings.host}:{self.ports[0]}"
        headers.append(("Location", f"http://{host}{_venue_path(short.group(1))}"))
        return 301, b""

    def _venue(
        self,
        request: _Request,
        settings: StandinSettings,
        stats: ServiceStats,
        headers: Headers,
        now: float,
    ) -> tuple[int, bytes | None]:
        # The limit comes first, as at a real API's edge: a refused request reaches nothing.
        if settings.rate_limit:
            client = request.headers.get(b"authorization", b"anonymous")
            quota = self._limit.take(client, settings.rate_limit, now)
            headers.append(("X-RateLimit-Limit", f"{settings.rate_limit:g}"))
            headers.append(("X-RateLimit-Remaining", str(quota.remaining)))
            headers.append(("X-RateLimit-Reset", str(math.ceil(time.time() + quota.frees_in))))
            if not quota.allowed:
                stats.over_limit += 1
                headers.append(("Retry-After", str(max(1, math.ceil(quota.frees_in)))))
                return 429, _RATE_LIMITED
        if settings.error_rate and random.random() < settings.error_rate:
            return 503, _error(503, "server_error")
        wanted = _VENUE.match(request.path)
        found = _venue_document(wanted.group(1)) if wanted else None
        if found is None:
            return 404, _NOT_FOUND
        body, etag = found
        headers.append(("ETag", etag))
        headers.append(("Cache-Control", f"max-age={settings.venue_max_age}"))
        if _etag_matches(request.headers.get(b"if-none-match"), etag):
            stats.not_modified += 1
            return 304, None
        return 200, body

    def _control(self, request: _Request) -> _Answer:
        """Health, faults and stats: answered at once and never counted as traffic."""
        try:
            status, document, allow = self._control_document(request)
        except ValueError as error:
            status, document, allow = 400, {"error": str(error)}, ""
        headers: Headers = [("Allow", allow)] if status == 405 else []
        return _Answer(
            _render(status, _json(document), headers, request.keep_alive), request.keep_alive
        )

    def _control_document(self, request: _Request) -> tuple[int, object, str]:
        path, method = request.path, request.method
        allowed = {
            "/health": ("GET",),
            "/_standin/faults": ("GET", "POST", "DELETE"),
            "/_standin/stats": ("GET",),
            "/_standin/stats/reset": ("POST",),
        }.get(path)
        if allowed is None:
            return 404, {"meta": {"code": 404, "errorType": "not_found"}}, ""
        if method not in allowed:
            return (
                405,
                {"meta": {"code": 405, "errorType": "method_not_allowed"}},
                ", ".join(allowed),
            )
        if path == "/health":
            return 200, {"status": "ok"}, ""
        if path == "/_standin/stats":
            return 200, self.stats, ""
        if path == "/_standin/stats/reset":
            self.reset_stats()
            return 200, self.stats, ""
        if method == "POST":
            self._set_fault_from(request.body)
        elif method == "DELETE":
            self.clear_faults()
        return 200, {"faults": self._describe_faults()}, ""

    def _set_fault_from(self, body: bytes) -> None:
        try:
            spec = json.loads(body or b"null")
        except ValueError:
            raise ValueError("the body must be a JSON object") from None
        if not isinstance(spec, dict):
            raise ValueError("the body must be a JSON object")
        unknown = set(spec) - {"service", "kind", "seconds", "status", "retry_after"}
        if unknown:
            raise ValueError(f"unknown fields: {', '.join(sorted(unknown))}")
        self.set_fault(
            str(spec.get("service", "")),
            str(spec.get("kind", "")),
            spec.get("seconds", 0),
            status=spec.get("status", DEFAULT_FAULT_STATUS),
            retry_after=spec.get("retry_after", DEFAULT_RETRY_AFTER),
        )

    def _describe_faults(self) -> dict[str, dict[str, Any]]:
        now = time.monotonic()
        described: dict[str, dict[str, Any]] = {}
        for service, fault in self._faults.items():
            if fault.until > now:
                about: dict[str, Any] = {"kind": fault.kind.value}
                about["seconds_left"] = round(fault.until - now, 3)
                if fault.kind is FaultKind.ERRORS:
                    about["status"] = fault.status
                elif fault.kind is FaultKind.THROTTLE:
                    about["retry_after"] = fault.retry_after
                described[service.value] = about
        return described


def serve(settings: StandinSettings) -> None:
    """Serve both services until SIGINT or SIGTERM."""
    asyncio.run(StandinServer(settings).run())
