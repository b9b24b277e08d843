"""Request round trip (docs/requests.md): how long `taskhub.request` waits for a check-in's answer.

One bridge, one recommended worker and the stand-in (its default 20 ms a call, two calls per
check-in) run as processes of their own on a private Mosquitto and a claimed Redis database; this
process sends N requests one after the other, each a check-in with a short link of its own (the
venue cache flatters nobody), and times each `taskhub.request` call: connect, subscribe, publish,
bridge, queue, worker, outbox, bridge, reply. A first request, not counted, warms every part.

Last line: `request_latency: p50=Xms p95=Yms max=Zms first=Wms n=N` (one line).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from contextlib import contextmanager

from bench.harness import Stage, median, percentile, stage, use_stage
from rig.isolation import free_port
from rig.processes import BRIDGE_READY, Process, python_module, start_worker

READY_TIMEOUT = 60.0
REPLY_TIMEOUT = 30.0
TOPIC = "checkins/nyc/tweets"
DEFAULT_LATENCY_MS = 20.0
"""The stand-in's own default (StandinSettings.latency_ms)."""
ID_BASE = 970_000_000


def _env(found: Stage, client_id: str, latency_ms: float) -> dict[str, str]:
    short, venue = free_port(), free_port()
    while venue == short:
        venue = free_port()
    return {
        **found.env(client_id),
        "TASKHUB_STANDIN__PORT": str(short),
        "TASKHUB_STANDIN__VENUE_PORT": str(venue),
        "TASKHUB_STANDIN__LATENCY_MS": str(latency_ms),
        "TASKHUB_HTTP__SHORTLINK_BASE_URL": f"http://127.0.0.1:{short}/s",
        "TASKHUB_HTTP__VENUE_API_BASE_URL": f"http://127.0.0.1:{venue}/v2",
        "TASKHUB_TELEMETRY__BRIDGE_PORT": "0",
        "TASKHUB_TELEMETRY__WORKER_PORT": "0",
        "PYTHONUNBUFFERED": "1",
    }


@contextmanager
def running(found: Stage, env: dict[str, str]) -> Iterator[None]:
    """The stand-in, a worker and a bridge, ready."""
    started: list[Process] = []
    try:
        standin = Process("standin", python_module("taskhub.cli", "standin"), found.workdir, env)
        started.append(standin.start())
        standin.wait_output("listening", timeout=READY_TIMEOUT, count=2)
        started.append(start_worker("worker", found.workdir, env))
        bridge = Process("bridge", python_module("bridge"), found.workdir, env)
        started.append(bridge.start())
        bridge.wait_output(BRIDGE_READY, timeout=READY_TIMEOUT, count=2)
        yield
    finally:
        for process in reversed(started):
            process.kill()


def _tweet(tweet_id: int) -> dict[str, object]:
    return {
        "id": str(tweet_id),
        "text": f"I'm at somewhere http://4sq.com/L{tweet_id}",
        "user": {"screen_name": "bench"},
        "created_at": "2026-11-22T10:00:00Z",
    }


def round_trip(tweet_id: int) -> float:
    """Seconds one request takes to come back OK."""
    from taskhub.requests import request

    started = time.perf_counter()
    reply = request(TOPIC, _tweet(tweet_id), timeout=REPLY_TIMEOUT)
    elapsed = time.perf_counter() - started
    if not reply.ok:
        raise RuntimeError(f"request {tweet_id} answered {reply.status.value}: {reply.document}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20, help="timed, one after the other")
    parser.add_argument("--latency-ms", type=float, default=DEFAULT_LATENCY_MS)
    parser.add_argument("--redis-db", type=int, help="use (and empty) this database")
    args = parser.parse_args()
    with stage(args.redis_db) as found:
        env = _env(found, "bench-request-bridge", args.latency_ms)
        use_stage(found, "bench-requester")
        with running(found, env):
            first = round_trip(ID_BASE)
            times = [round_trip(ID_BASE + n) for n in range(1, args.requests + 1)]
    ms = [value * 1000 for value in times]
    print(
        f"request_latency: p50={median(ms):.1f}ms p95={percentile(ms, 0.95):.1f}ms "
        f"max={max(ms):.1f}ms first={first * 1000:.1f}ms n={len(ms)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
