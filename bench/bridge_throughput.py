"""Whole-path drain speed: N QoS 1 check-ins pre-queued at the broker, drained until all N tasks
are in Redis (by count), by a raw subscriber (the ceiling), a naive bridge, and taskhub's bridge.

    python -m bench.bridge_throughput [--messages 200000] [--rounds 5] [--profile FILE]

Each round publishes N messages once into three persistent sessions (one per contestant), then
times each contestant in turn, rotating who goes first. Speed is N / (last landed - first landed).
Prints a table of medians and, last, `bridge: taskhub=X/s naive=Y/s raw=Z/s vs_naive= vs_raw=`.
"""

from __future__ import annotations

import argparse
import os
import pstats
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.contestants import open_session, raw_seconds, start_bridge, start_naive, start_raw
from bench.harness import TOPIC_PREFIX, Stage, median, peak_rss_mb, stage, use_stage, wait_until
from rig.processes import Process

CONTESTANTS = ("raw", "naive", "taskhub")
QUEUE = "checkins"
FILTERS = [(f"{TOPIC_PREFIX}checkins/#", 1), (f"{TOPIC_PREFIX}sensors/#", 1)]
DRAIN_TIMEOUT = 900.0


def client_id(name: str) -> str:
    return f"bench-{os.getpid()}-{name}"


def preload(found: Stage, count: int, seed: int) -> float:
    """Publish `count` check-ins once; every contestant's session queues a copy. Returns seconds."""
    from taskhub.demo.feed import checkin_tweets, publish
    from taskhub.settings import MqttSettings

    started = time.monotonic()
    topic = TOPIC_PREFIX + "checkins/{city}/tweets"
    messages = checkin_tweets(count, id_base=seed * 10_000_000, topic=topic, seed=seed)
    settings = MqttSettings(port=found.mqtt_port, client_id="bench-publisher")
    sent = publish(settings, messages, rate=0, total=count, qos=1, show_progress=False)
    if sent != count:
        raise RuntimeError(f"the broker acknowledged {sent} of {count} messages")
    return time.monotonic() - started


def drain_raw(found: Stage, count: int) -> float:
    """Receive and ack only: how fast MQTT alone can go."""
    raw = start_raw(found, client_id("raw"), count)
    try:
        return count / max(raw_seconds(raw, DRAIN_TIMEOUT), 1e-9)
    finally:
        raw.kill()


def _drain_into_redis(found: Stage, count: int, contestant: Process) -> tuple[float, float]:
    """Speed from the first task in Redis to the `count`th, and the contestant's peak RSS."""
    client = found.redis()
    try:
        first = wait_until(lambda: client.llen(QUEUE) > 0, 120, "the first task in Redis")
        last = wait_until(lambda: client.llen(QUEUE) >= count, DRAIN_TIMEOUT, f"{count} tasks")
        rss = peak_rss_mb(contestant.pid)
        contestant.terminate(timeout=60)
    finally:
        contestant.kill()
    extra = client.llen(QUEUE) - count  # at-least-once: a redelivered message may land twice
    if extra:
        print(f"  ({extra} more tasks than messages: MQTT redeliveries)", file=sys.stderr)
    return count / max(last - first, 1e-9), rss


def drain_naive(found: Stage, count: int) -> float:
    """paho's on_message calling Celery's send_task once per message, auto ack."""
    name = client_id("naive")
    drops_before = found.keepalive_drops(name)
    speed = _drain_into_redis(found, count, start_naive(found, name))[0]
    drops = found.keepalive_drops(name) - drops_before
    if drops:
        # Its network thread went quiet inside send_task for longer than the keepalive; the
        # wait for paho's reconnect is part of its time. Said, so nobody mistakes it for speed.
        print(
            f"  (the broker dropped the naive bridge {drops} time(s) for a missed keepalive: "
            "its figure includes the reconnect wait)",
            file=sys.stderr,
        )
    return speed


def drain_taskhub(
    found: Stage, count: int, profile: Path | None, session: str = "taskhub"
) -> tuple[float, float]:
    """taskhub's bridge as an operator runs it, on the MQTT session named `session`; returns
    (speed, peak RSS MB)."""
    return _drain_into_redis(found, count, start_bridge(found, client_id(session), profile))


def run(messages: int, rounds: int, profile: Path | None, redis_db: int | None) -> int:
    console = Console(stderr=True)
    speeds: dict[str, list[float]] = {name: [] for name in CONTESTANTS}
    rss: list[float] = []
    with stage(redis_db) as found:
        use_stage(found, client_id("naive"))
        for name in CONTESTANTS:
            open_session(found, client_id(name), FILTERS)
        for round_number in range(rounds):
            seconds = preload(found, messages, seed=round_number + 1)
            order = CONTESTANTS[round_number % 3 :] + CONTESTANTS[: round_number % 3]
            line = [f"round {round_number + 1}: preload {messages / seconds:,.0f}/s"]
            for name in order:
                found.redis().flushdb()
                if name == "raw":
                    speed = drain_raw(found, messages)
                elif name == "naive":
                    speed = drain_naive(found, messages)
                else:
                    speed, peak = drain_taskhub(found, messages, None)
                    rss.append(peak)
                speeds[name].append(speed)
                line.append(f"{name} {speed:,.0f}/s")
            console.print(", ".join(line))
        if profile is not None:  # an extra drain under cProfile, left out of the figures
            preload(found, messages, seed=rounds + 1)
            found.redis().flushdb()
            drain_taskhub(found, messages, profile)
    table = Table(title=f"drain {messages:,} QoS 1 messages, {rounds} rounds (messages/s)")
    for column in ("contestant", "median", "min", "max"):
        table.add_column(column, justify="right")
    for name in CONTESTANTS:
        found_speeds = speeds[name]
        table.add_row(
            name,
            f"{median(found_speeds):,.0f}",
            f"{min(found_speeds):,.0f}",
            f"{max(found_speeds):,.0f}",
        )
    Console().print(table)
    taskhub, naive, raw = (median(speeds[name]) for name in ("taskhub", "naive", "raw"))
    print(f"bridge peak RSS: median {median(rss):.1f} MB, max {max(rss):.1f} MB")
    if profile is not None:
        print(f"profile of an extra taskhub drain: {profile}")
        pstats.Stats(str(profile)).sort_stats("tottime").print_stats(12)
    print(
        f"bridge: taskhub={taskhub:,.0f}/s naive={naive:,.0f}/s raw={raw:,.0f}/s "
        f"vs_naive={taskhub / naive:.2f} vs_raw={taskhub / raw:.2f}"
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", type=Path, help="cProfile one more taskhub drain into FILE")
    parser.add_argument("--redis-db", type=int, help="use (and empty) this Redis database")
    args = parser.parse_args()
    return run(args.messages, args.rounds, args.profile, args.redis_db)


if __name__ == "__main__":
    sys.exit(main())
