"""How many requests a second the stand-in answers on one core, so that a benchmark driving
workers through it knows the stand-in is not what limits it.

    python -m bench.standin_ceiling [--seconds 5] [--connections 64] [--drivers 1] [--latency-ms 0]

The stand-in runs as its own process (`taskhub standin --latency-ms 0`). Load generators, each a
process of its own, keep `--connections` keep-alive connections busy with venue API requests
over raw sockets, one request in flight per connection, as HTTP clients in workers do. The
first second is warm-up. The ceiling is the requests answered per CPU-second the stand-in
process used: on a 2-core machine the load generators take a core of their own and more, so
the rate the stand-in reached under them would understate it. The line before the last gives
that rate and the stand-in's CPU share. Last line: `standin: ceiling=X req/s`.

`--latency-ms` above 0 prices the requests the stand-in holds back (a timer and a task each);
it needs many more connections to keep the stand-in busy.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import re
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from rig.isolation import free_port
from rig.processes import Process, python_module, wait_for
from taskhub.demo.venues import venue_for_code

DEFAULT_SECONDS = 5.0
DEFAULT_CONNECTIONS = 64
DEFAULT_DRIVERS = 1
DEFAULT_LATENCY_MS = 0.0
WARMUP_SECONDS = 1.0
START_TIMEOUT = 30.0
DISTINCT_VENUES = 1000
"""Venue ids the requests cycle through, as a Zipf feed's workers would ask for them."""
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Tally:
    """What one load generator saw within the measured window."""

    answered: int
    not_ok: int


class _Client(asyncio.Protocol):
    """One keep-alive connection sending the next request as soon as the last is answered."""

    def __init__(self, requests: list[bytes], window: tuple[float, float], done: asyncio.Event):
        self._requests = requests
        self._next = 0
        self._start, self._end = window
        self._done = done
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self.answered = 0
        self.not_ok = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._send()

    def _send(self) -> None:
        assert self._transport is not None
        self._transport.write(self._requests[self._next % len(self._requests)])
        self._next += 1

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while (end := buffer.find(b"\r\n\r\n")) >= 0:
            length = _CONTENT_LENGTH.search(buffer, 0, end + 2)
            total = end + 4 + (int(length.group(1)) if length else 0)
            if len(buffer) < total:
                return
            ok = buffer[9:12] == b"200"
            del buffer[:total]
            now = time.time()
            if self._start <= now < self._end:
                self.answered += 1
                self.not_ok += not ok
            if now >= self._end:
                assert self._transport is not None
                self._transport.close()
                return
            self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        self._done.set()


async def _drive_async(port: int, connections: int, window: tuple[float, float]) -> Tally:
    loop = asyncio.get_running_loop()
    requests = [
        f"GET /v2/venues/{venue_for_code(f'C{n:06d}').venue_id} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\nAccept: application/json\r\n\r\n".encode()
        for n in range(DISTINCT_VENUES)
    ]
    clients: list[_Client] = []
    finished: list[asyncio.Event] = []
    for offset in range(connections):
        done = asyncio.Event()
        rotated = requests[offset:] + requests[:offset]
        _, client = await loop.create_connection(
            functools.partial(_Client, rotated, window, done),
            "127.0.0.1",
            port,
        )
        clients.append(client)
        finished.append(done)
    await asyncio.wait_for(
        asyncio.gather(*(done.wait() for done in finished)),
        timeout=window[1] - time.time() + START_TIMEOUT,
    )
    return Tally(sum(c.answered for c in clients), sum(c.not_ok for c in clients))


def _drive(port: int, connections: int, window: tuple[float, float]) -> Tally:
    """One load generator process: `connections` clients until the window closes."""
    return asyncio.run(_drive_async(port, connections, window))


def _cpu_seconds(pid: int) -> float:
    """User + system CPU the process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _get_json(url: str) -> dict[str, dict[str, object]]:
    with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 (our own http:// URL)
        document: dict[str, dict[str, object]] = json.load(answer)
        return document


def _answers(url: str) -> bool:
    try:
        _get_json(url)
    except OSError:
        return False
    return True


def measure(seconds: float, connections: int, drivers: int, latency_ms: float) -> float:
    """Run the stand-in under load; print what was seen and return the ceiling in req/s."""
    port, venue_port = free_port(), free_port()
    argv = python_module(
        "taskhub.cli", "standin", "--port", str(port), "--venue-port", str(venue_port),
        "--latency-ms", str(latency_ms),
        "--error-rate", "0", "--tail-rate", "0", "--rate-limit", "0",
    )  # fmt: skip
    workdir = Path(tempfile.mkdtemp(prefix="taskhub-standin-ceiling-"))
    standin = Process("standin", argv, workdir, {}).start()
    try:
        stats_url = f"http://127.0.0.1:{venue_port}/_standin/stats"
        wait_for(lambda: _answers(stats_url), START_TIMEOUT, "the stand-in to answer")
        start = time.time() + WARMUP_SECONDS + 1.0  # the drivers' start-up is not warm-up
        window = (start, start + seconds)
        share = [connections // drivers + (n < connections % drivers) for n in range(drivers)]
        with ProcessPoolExecutor(drivers, mp_context=get_context("spawn")) as pool:
            running = [pool.submit(_drive, venue_port, n, window) for n in share if n]
            time.sleep(max(0.0, start - time.time()))
            cpu_before = _cpu_seconds(standin.pid)
            time.sleep(max(0.0, window[1] - time.time()))
            cpu_used = _cpu_seconds(standin.pid) - cpu_before
            tallies = [future.result(timeout=seconds + START_TIMEOUT) for future in running]
        served = _get_json(stats_url)["venue"]
    finally:
        standin.terminate()
    answered = sum(t.answered for t in tallies)
    not_ok = sum(t.not_ok for t in tallies)
    rate = answered / seconds
    ceiling = answered / cpu_used if cpu_used > 0 else float("inf")
    print(
        f"standin: answered={answered} in {seconds:g}s ({rate:.0f} req/s) over {connections} "
        f"connections from {drivers} load generator(s); stand-in CPU {cpu_used / seconds:.0%} "
        f"of a core; not 200: {not_ok}; requests the stand-in counted: {served['requests']}"
    )
    if not_ok:
        raise SystemExit(f"standin: {not_ok} answers were not 200; the figure means nothing")
    return ceiling


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.standin_ceiling", description=__doc__)
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, help="measured time")
    parser.add_argument("--connections", type=int, default=DEFAULT_CONNECTIONS)
    parser.add_argument(
        "--drivers", type=int, default=DEFAULT_DRIVERS, help="load generator processes"
    )
    parser.add_argument("--latency-ms", type=float, default=DEFAULT_LATENCY_MS)
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.connections < 1 or not 1 <= args.drivers <= args.connections:
        parser.error("--seconds must be positive and 1 <= --drivers <= --connections")
    ceiling = measure(args.seconds, args.connections, args.drivers, args.latency_ms)
    print(f"standin: ceiling={ceiling:.0f} req/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
