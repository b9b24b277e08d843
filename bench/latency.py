"""Publish-to-task-start latency at a steady rate, through taskhub's bridge and a naive bridge.

    python -m bench.latency [--rate 1000] [--seconds 30] [--rounds 3]

A publisher sends QoS 1 pings stamped with the time they were sent, at `--rate` per second for
`--seconds`, through one bridge at a time (alternating over rounds, each bridge a process of its
own) into Celery workers running a no-op task that notes when it started. The first second of
each stretch is warm-up and left out. Each figure is the median over rounds of that stretch's
percentile, as the throughput benchmark takes medians of rounds: one stretch that the shared
machine stalls for a while moves pooled percentiles far more than the bridge under test does.
Last line: `latency: p50=..ms p95=..ms p99=..ms naive_p50=..ms naive_p99=..ms`.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.harness import TOPIC_PREFIX, Stage, median, percentile, stage, use_stage, wait_until
from bench.naive_bridge import READY as NAIVE_READY
from bench.noop_route import QUEUE, ROUTES_SPEC, latencies_key
from rig.processes import BRIDGE_READY, Process, celery, python_module

CONTESTANTS = ("taskhub", "naive")
SHARES = (0.5, 0.95, 0.99)
WARMUP_SECONDS = 1.0
WORKERS = 2
"""Solo workers consuming the no-op queue. One runs about 1,300 no-op tasks a second here, most
of it kombu's per-message Redis bookkeeping in the consuming process (prefork does not spread
that), so at 1,000/s a single one would queue, and the latency measured would be its backlog."""


def _worker_argv(number: int) -> list[str]:
    """A lean worker: no per-task log lines or events, and a shallow prefetch, so that a worker
    that stalls holds few pings while the other one could run them."""
    return celery("worker", "-P", "solo", "-n", f"latency{number}@%h",
                  "--prefetch-multiplier", "4", "--without-mingle", "--without-gossip",
                  "--loglevel=WARNING", "-Q", QUEUE,
                  "--", "worker_send_task_events=False")  # fmt: skip


@dataclass(frozen=True, slots=True)
class Ping:
    topic: str
    seq: int

    @property
    def payload(self) -> bytes:
        """Stamped as it is handed to the MQTT client, so the time includes no queueing here."""
        return json.dumps({"seq": self.seq, "sent_at": time.time()}).encode()


NO_PROBES = {"TASKHUB_TELEMETRY__BRIDGE_PORT": "0", "TASKHUB_TELEMETRY__WORKER_PORT": "0"}
"""Two workers on one host would both claim the default probe port; nothing here scrapes them."""


def _env(found: Stage, client_id: str) -> dict[str, str]:
    return {
        **found.env(client_id),
        **NO_PROBES,
        "TASKHUB_ROUTES": ROUTES_SPEC,
        "PYTHONUNBUFFERED": "1",
    }


def _bridge(found: Stage, name: str, run: str, log_dir: Path) -> Process:
    client_id = f"bench-latency-{run}-{name}"  # a fresh session: nothing queued from before
    if name == "taskhub":
        process = Process(name, python_module("bridge"), log_dir, _env(found, client_id))
        process.start().wait_output(BRIDGE_READY, timeout=60, count=3)
    else:
        argv = python_module(
            "bench.naive_bridge", f"{TOPIC_PREFIX}latency/+", "bench.noop.ping", "source", "-1"
        )
        process = Process(name, argv, log_dir, _env(found, client_id))
        process.start().wait_output(NAIVE_READY, timeout=60)
    return process


def _await_worker(found: Stage) -> None:
    """The worker logs nothing at WARNING: send it a ping and wait for it to run."""
    from taskhub.celery import app

    app.send_task("bench.noop.ping", args=({"seq": 0, "sent_at": time.time()},),
                  kwargs={"source": "probe"})  # fmt: skip
    client = found.redis()
    wait_until(lambda: client.llen(latencies_key("probe")) > 0, 60, "the worker to run a ping")


def stretch(
    found: Stage, name: str, run: str, rate: float, seconds: float, log_dir: Path
) -> list[float]:
    """One bridge carries `rate` pings a second for `seconds`; their latencies in ms."""
    from taskhub.demo.feed import publish
    from taskhub.settings import MqttSettings

    count = int(rate * seconds)
    source = f"{name}-{run}"
    bridge = _bridge(found, name, run, log_dir)
    try:
        pings = (Ping(f"{TOPIC_PREFIX}latency/{source}", seq) for seq in range(count))
        settings = MqttSettings(port=found.mqtt_port, client_id=f"bench-publisher-{run}")
        publish(settings, pings, rate=rate, total=count, qos=1, show_progress=False)
        client = found.redis()
        key = latencies_key(source)
        wait_until(lambda: client.llen(key) >= count, 120, f"{count} pings to start")
    finally:
        bridge.terminate()
    samples = [float(value) * 1000 for value in client.lrange(key, 0, -1)]
    return samples[int(rate * WARMUP_SECONDS) :]


def run(rate: float, seconds: float, rounds: int, redis_db: int | None) -> int:
    console = Console(stderr=True)
    results: dict[str, list[list[float]]] = {name: [] for name in CONTESTANTS}
    with stage(redis_db) as found:
        use_stage(found, f"bench-latency-{os.getpid()}")
        os.environ["TASKHUB_ROUTES"] = ROUTES_SPEC
        log_dir = found.workdir
        workers = [
            Process(f"worker{n}", _worker_argv(n), log_dir, _env(found, "unused"))
            for n in range(WORKERS)
        ]
        try:
            for worker in workers:
                worker.start()
            _await_worker(found)
            gc.freeze()  # the publisher lives here: its collections must not delay the pings
            for round_number in range(rounds):
                order = CONTESTANTS if round_number % 2 == 0 else CONTESTANTS[::-1]
                for name in order:
                    samples = stretch(found, name, str(round_number), rate, seconds, log_dir)
                    results[name].append(samples)
                    console.print(
                        f"round {round_number + 1} {name}: p50={percentile(samples, 0.5):.1f}ms "
                        f"p99={percentile(samples, 0.99):.1f}ms ({len(samples)} pings)"
                    )
        finally:
            for worker in workers:
                worker.kill()
    table = Table(
        title=f"publish -> task start at {rate:g} msg/s, {seconds:g}s x {rounds} (ms): medians "
        "of the rounds' percentiles, then over all pings pooled"
    )
    for column in ("bridge", "p50", "p95", "p99", "pooled p99", "max", "pings"):
        table.add_column(column, justify="right")
    summary: dict[str, dict[float, float]] = {}
    for name in CONTESTANTS:
        stretches = results[name]
        pooled = [sample for samples in stretches for sample in samples]
        summary[name] = {
            share: median(percentile(samples, share) for samples in stretches) for share in SHARES
        }
        table.add_row(
            name,
            *(f"{summary[name][share]:.1f}" for share in SHARES),
            f"{percentile(pooled, 0.99):.1f}",
            f"{max(pooled):.1f}",
            str(len(pooled)),
        )
    Console().print(table)
    taskhub, naive = summary["taskhub"], summary["naive"]
    print(
        f"latency: p50={taskhub[0.5]:.1f}ms p95={taskhub[0.95]:.1f}ms p99={taskhub[0.99]:.1f}ms "
        f"naive_p50={naive[0.5]:.1f}ms naive_p99={naive[0.99]:.1f}ms"
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis-db", type=int, help="use (and empty) this Redis database")
    args = parser.parse_args()
    return run(args.rate, args.seconds, args.rounds, args.redis_db)


if __name__ == "__main__":
    sys.exit(main())
