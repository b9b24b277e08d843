"""Whole-path drain speed: N QoS 1 check-ins pre-queued at the broker, drained until all N tasks
are in Redis (by count), by a raw subscriber (the ceiling), a naive bridge, and taskhub's bridge.

    python -m bench.bridge_throughput [--messages 200000] [--rounds 5] [--profile FILE]
        [--contestants raw,naive,taskhub] [--baseline DIR]

Each round publishes N messages once into one persistent session per contestant, then times each
contestant in turn, rotating who goes first. Speed is N / (last landed - first landed). Prints a
table of medians and, last, `bridge: taskhub=X/s naive=Y/s raw=Z/s vs_naive= vs_raw=` (with
other contestants, each one's speed and its ratio to taskhub's).
"""

from __future__ import annotations

import argparse
import os
import pstats
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.contestants import open_session, raw_seconds, start_bridge, start_naive, start_raw
from bench.harness import TOPIC_PREFIX, Stage, median, peak_rss_mb, stage, use_stage, wait_until
from bench.otlp_sink import READY as SINK_READY
from bench.otlp_sink import spans_received
from rig.isolation import free_port
from rig.processes import Process, python_module

CONTESTANTS = ("raw", "naive", "taskhub")
"""The default contestants."""
BRIDGES = ("taskhub", "traced", "sampled", "baseline")
"""`python -m bridge` as run, differing only in their environment: taskhub (tracing off, the
default), traced (every message traced, spans exported over OTLP/HTTP to bench/otlp_sink.py),
sampled (the same, 1 trace in SAMPLED_RATIO^-1 recorded, every one propagated), baseline (the
code under --baseline DIR, such as `git archive` of an earlier commit)."""
KNOWN = ("taskhub", "naive", "raw", "traced", "sampled", "baseline")
"""Every contestant, in the order the summary names them."""
SAMPLED_RATIO = 0.01
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
    found: Stage,
    count: int,
    profile: Path | None,
    session: str = "taskhub",
    env: Mapping[str, str] | None = None,
) -> tuple[float, float]:
    """taskhub's bridge as an operator runs it, on the MQTT session named `session`, with `env`
    added; returns (speed, peak RSS MB)."""
    bridge = start_bridge(found, client_id(session), profile, env, name=session)
    return _drain_into_redis(found, count, bridge)


TRACED = ("traced", "sampled")


@contextmanager
def otlp_sink(found: Stage, needed: bool) -> Iterator[tuple[Process | None, str]]:
    """bench/otlp_sink.py as a process of its own, and its endpoint, if `needed`."""
    if not needed:
        yield None, ""
        return
    port = free_port()
    sink = Process("otlp-sink", python_module("bench.otlp_sink", str(port)), found.workdir, {})
    sink.start()
    try:
        sink.wait_output(SINK_READY, timeout=30)
        yield sink, f"http://127.0.0.1:{port}"
    finally:
        sink.kill()


def bridge_env(name: str, endpoint: str, baseline: Path | None) -> dict[str, str]:
    """What the environment of bridge contestant `name` adds."""
    traced = {"TASKHUB_TRACING__ENABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}
    if name == "traced":
        return traced
    if name == "sampled":
        return {
            **traced,
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": str(SAMPLED_RATIO),
        }
    if name == "baseline":
        assert baseline is not None
        return {"PYTHONPATH": str(baseline.resolve())}
    return {}


def run(  # noqa: C901, PLR0912 (one loop over contestants, then the summary)
    messages: int,
    rounds: int,
    profile: Path | None,
    redis_db: int | None,
    contestants: tuple[str, ...] = CONTESTANTS,
    baseline: Path | None = None,
) -> int:
    console = Console(stderr=True)
    speeds: dict[str, list[float]] = {name: [] for name in contestants}
    rss: dict[str, list[float]] = {name: [] for name in contestants if name in BRIDGES}
    exported: list[str] = []
    needed = any(name in TRACED for name in contestants)
    with stage(redis_db) as found, otlp_sink(found, needed) as (sink, endpoint):
        use_stage(found, client_id("naive"))
        for name in contestants:
            open_session(found, client_id(name), FILTERS)
        for round_number in range(rounds):
            seconds = preload(found, messages, seed=round_number + 1)
            turn = round_number % len(contestants)
            order = contestants[turn:] + contestants[:turn]
            line = [f"round {round_number + 1}: preload {messages / seconds:,.0f}/s"]
            for name in order:
                found.redis().flushdb()
                if name == "raw":
                    speed = drain_raw(found, messages)
                elif name == "naive":
                    speed = drain_naive(found, messages)
                else:
                    spans_before = spans_received(sink.output()) if sink else 0
                    env = bridge_env(name, endpoint, baseline)
                    speed, peak = drain_taskhub(found, messages, None, name, env)
                    rss[name].append(peak)
                    if sink is not None and name in TRACED:  # its spans flushed at its stop
                        spans = spans_received(sink.output()) - spans_before
                        exported.append(f"round {round_number + 1} {name}: {spans:,}")
                speeds[name].append(speed)
                line.append(f"{name} {speed:,.0f}/s")
            console.print(", ".join(line))
        if profile is not None:  # an extra drain under cProfile, left out of the figures
            preload(found, messages, seed=rounds + 1)
            found.redis().flushdb()
            drain_taskhub(found, messages, profile)
    if exported:
        print(f"spans exported (of {messages:,} messages a drain): {'; '.join(exported)}")
    table = Table(title=f"drain {messages:,} QoS 1 messages, {rounds} rounds (messages/s)")
    for column in ("contestant", "median", "min", "max"):
        table.add_column(column, justify="right")
    for name in contestants:
        found_speeds = speeds[name]
        table.add_row(
            name,
            f"{median(found_speeds):,.0f}",
            f"{min(found_speeds):,.0f}",
            f"{max(found_speeds):,.0f}",
        )
    Console().print(table)
    for name, peaks in rss.items():
        label = "bridge" if name == "taskhub" else name
        print(f"{label} peak RSS: median {median(peaks):.1f} MB, max {max(peaks):.1f} MB")
    if profile is not None:
        print(f"profile of an extra taskhub drain: {profile}")
        pstats.Stats(str(profile)).sort_stats("tottime").print_stats(12)
    print(summary({name: median(found) for name, found in speeds.items()}))
    return 0


def summary(speeds: Mapping[str, float]) -> str:
    """The last line: each contestant's median speed, then taskhub's against the others."""
    named = [name for name in KNOWN if name in speeds]
    parts = [f"{name}={speeds[name]:,.0f}/s" for name in named]
    if "taskhub" in speeds:
        taskhub = speeds["taskhub"]
        for name in ("naive", "raw"):
            if name in speeds:
                parts.append(f"vs_{name}={taskhub / speeds[name]:.2f}")
        for name in named:
            if name in BRIDGES and name != "taskhub":
                parts.append(f"{name}_vs_taskhub={speeds[name] / taskhub:.3f}")
    return "bridge: " + " ".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", type=Path, help="cProfile one more taskhub drain into FILE")
    parser.add_argument("--redis-db", type=int, help="use (and empty) this Redis database")
    parser.add_argument(
        "--contestants",
        default=",".join(CONTESTANTS),
        help=f"comma-separated, from {', '.join(KNOWN)}",
    )
    parser.add_argument(
        "--baseline", type=Path, help="the code tree the `baseline` contestant runs the bridge of"
    )
    args = parser.parse_args()
    contestants = tuple(name.strip() for name in args.contestants.split(",") if name.strip())
    unknown = set(contestants) - set(KNOWN)
    if unknown or not contestants or len(set(contestants)) != len(contestants):
        parser.error(f"--contestants: each once, from {', '.join(KNOWN)}")
    if ("baseline" in contestants) != (args.baseline is not None):
        parser.error("the baseline contestant and --baseline DIR go together")
    return run(args.messages, args.rounds, args.profile, args.redis_db, contestants, args.baseline)


if __name__ == "__main__":
    sys.exit(main())
