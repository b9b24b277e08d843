"""How fast workers resolve check-ins against an upstream that takes 50 ms a call.

Each stage starts a stand-in (its own process), the workers (their own processes, idle and
ready), then queues a burst of check-ins into Redis at once and times it until the last one is
stored. Contestants, run on the same task code in the same run, alternating by round:

- stock: `celery -A taskhub worker --autoscale=10,2`, as a Celery user would start it;
- taskhub: the recommended worker, one gevent process per core (docs/workers.md);
- ceiling: the recommended worker against a 0 ms upstream: how well latency is hidden;
- limited: the recommended worker against a venue API limited to R requests/s (429 + Retry-After),
  with taskhub's shared rate limit set to 0.95 R (docs/upstreams.md);
- zipf: the recommended worker on check-ins whose venues follow a Zipf popularity: the cache.

Last line:
`checkins: taskhub=X/s stock=Y/s vs_stock=Z ceiling=C/s vs_ceiling=W limited=L/s limit_use=U
429s=N requests=M` (one line).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis
from rich.console import Console
from rich.table import Table

from bench.harness import median, percentile, wait_until
from bench.probe import POOL_KEY, WAITS_KEY
from rig.isolation import claim_redis_db, free_port, release_redis_db
from rig.processes import WORKER_READY, Process, celery, python_module
from taskhub import redis_keys

LATENCY_MS = 50.0
STOCK_AUTOSCALE = "10,2"
TASKHUB_AUTOSCALE = "200,10"
SHARED_LIMIT_SHARE = 0.95
"""taskhub's shared limit as a share of the venue API's own."""
ENQUEUE_BATCH = 1000
DRAIN_TIMEOUT = 600.0
READY_TIMEOUT = 60.0
QUEUE = "checkins"
KEY_PREFIX = "taskhub"
"""TASKHUB_KEY_PREFIX's default, which the workers here run with."""
ID_BASE = 7_000_000_000
console = Console(stderr=True, width=150)


@dataclass
class Outcome:
    """One contestant's drain."""

    name: str
    count: int
    seconds: float
    waits: list[float]
    pool: dict[str, list[int]]
    venue: dict[str, object] = field(default_factory=dict)
    cache: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.count / self.seconds

    def pool_summary(self) -> str:
        """Each worker's pool size over time: first, peak, last."""
        parts = []
        for sizes in self.pool.values():
            if sizes:
                parts.append(f"{sizes[0]}->{max(sizes)}->{sizes[-1]}")
        return " ".join(parts) or "-"

    @property
    def venue_ok(self) -> int:
        by_status = dict(self.venue.get("by_status", {}))  # type: ignore[call-overload]
        return int(by_status.get("200", 0)) + int(by_status.get("304", 0))

    @property
    def venue_429s(self) -> int:
        by_status = dict(self.venue.get("by_status", {}))  # type: ignore[call-overload]
        return int(by_status.get("429", 0))


@dataclass(frozen=True, slots=True)
class Stage:
    redis_url: str
    workdir: Path

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)


def _env(stage: Stage, ports: tuple[int, int], extra: dict[str, str]) -> dict[str, str]:
    short, venue = ports
    return {
        "TASKHUB_BROKER_URL": stage.redis_url,
        "TASKHUB_RESULT_BACKEND": stage.redis_url,
        "TASKHUB_HTTP__SHORTLINK_BASE_URL": f"http://127.0.0.1:{short}/s",
        "TASKHUB_HTTP__VENUE_API_BASE_URL": f"http://127.0.0.1:{venue}/v2",
        "TASKHUB_STANDIN__PORT": str(short),
        "TASKHUB_STANDIN__VENUE_PORT": str(venue),
        "REMAP_SIGTERM": "SIGQUIT",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


@contextmanager
def standin(stage: Stage, latency_ms: float, rate_limit: int) -> Iterator[tuple[int, int]]:
    ports = (free_port(), free_port())
    argv = python_module(
        "taskhub.cli",
        "standin",
        "--latency-ms",
        str(latency_ms),
        "--rate-limit",
        str(rate_limit),
    )
    process = Process("standin", argv, stage.workdir, _env(stage, ports, {})).start()
    try:
        process.wait_output("listening", timeout=READY_TIMEOUT, count=2)
        yield ports
    finally:
        process.terminate(timeout=10)


def _stats(port: int) -> dict[str, dict[str, object]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_standin/stats", timeout=5) as answer:
        return dict(json.load(answer))


@contextmanager
def workers(
    stage: Stage, ports: tuple[int, int], argv_tail: list[str], count: int, env: dict[str, str]
) -> Iterator[list[Process]]:
    started = []
    try:
        for n in range(count):
            argv = celery(
                "worker",
                *argv_tail,
                "-Q",
                QUEUE,
                "--include",
                "bench.probe",
                "--loglevel=INFO",
                "--without-mingle",
                "--without-gossip",
                "-n",
                f"bench{n}-{os.getpid()}@%h",
            )
            name = f"worker{n}"
            # Probes on, as deployed: each worker of a host needs its own port.
            probes = {"TASKHUB_TELEMETRY__WORKER_PORT": str(free_port()), **env}
            started.append(Process(name, argv, stage.workdir, _env(stage, ports, probes)).start())
        for process in started:
            process.wait_output(WORKER_READY, timeout=READY_TIMEOUT)
        yield started
    finally:
        for process in started:
            process.kill()


def enqueue(stage: Stage, count: int, id_base: int, venues: int) -> None:
    """Push `count` check-in tasks into the queue in a few round trips: a burst."""
    import tasks.checkins  # noqa: F401  (registers the task whose options the messages carry)
    from taskhub.celery import app
    from taskhub.demo.feed import checkin_tweets
    from taskhub.task_messages import MessageBuilder, TaskCall, deterministic_task_id

    task = "tasks.checkins.resolve_checkin"
    builder = MessageBuilder.for_tasks(app, [task])
    client = stage.redis()
    tweets = checkin_tweets(count, id_base=id_base, seed=id_base, venues=venues)
    batch: list[str] = []
    for message in tweets:
        call = TaskCall(
            task=task,
            task_id=deterministic_task_id(task, str(message.tweet["id"])),
            queue=QUEUE,
            args=(message.tweet,),
            kwargs={"city": "bench"},
        )
        batch.append(builder.build(call))
        if len(batch) >= ENQUEUE_BATCH:
            client.lpush(QUEUE, *batch)
            batch.clear()
    if batch:
        client.lpush(QUEUE, *batch)


def drain(  # noqa: PLR0913  (keyword-only knobs of one stage)
    name: str,
    stage: Stage,
    *,
    count: int,
    latency_ms: float,
    argv_tail: list[str],
    processes: int,
    rate_limit: int = 0,
    venues: int = 0,
    id_base: int = ID_BASE,
    worker_env: dict[str, str] | None = None,
) -> Outcome:
    client = stage.redis()
    client.flushdb()
    with standin(stage, latency_ms, rate_limit) as ports:
        env = dict(worker_env or {})
        if rate_limit:
            # A little under the upstream's own limit, as docs/upstreams.md advises.
            shared = max(1, int(rate_limit * SHARED_LIMIT_SHARE))
            hosts = {f"127.0.0.1:{ports[1]}": {"rate_limit": shared}}
            env["TASKHUB_HTTP__HOSTS"] = json.dumps(hosts)
        with workers(stage, ports, argv_tail, processes, env):
            resolved = redis_keys.checkins_resolved(KEY_PREFIX)
            started = time.monotonic()
            enqueue(stage, count, id_base, venues)
            ended = wait_until(
                lambda: int(client.xlen(resolved)) >= count, DRAIN_TIMEOUT, f"{name}: {count}"
            )
            venue = _stats(ports[1]).get("venue", {})
        waits = [float(w) for w in client.lrange(WAITS_KEY, 0, -1)]
        pool: dict[str, list[int]] = {}
        for raw in client.lrange(POOL_KEY, 0, -1):
            _, worker, size = str(raw, "ascii").split()  # type: ignore[arg-type]
            pool.setdefault(worker, []).append(int(size))
        stats = client.hgetall(redis_keys.cache_stats(KEY_PREFIX)).items()
        cache = {str(k, "ascii"): int(v) for k, v in stats}  # type: ignore[arg-type]
    return Outcome(name, count, ended - started, waits, pool, dict(venue), cache)


def _ms(values: list[float], share: float) -> str:
    return f"{percentile(values, share) * 1000:,.0f}" if values else "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkins", type=int, default=10_000, help="per taskhub stage")
    parser.add_argument("--stock-checkins", type=int, default=1_000)
    parser.add_argument("--rate-limit", type=int, default=100, help="venue API R requests/s")
    parser.add_argument("--limited-seconds", type=float, default=40.0)
    parser.add_argument("--venues", type=int, default=1_000, help="Zipf stage's venues")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--redis-db", type=int, help="use (and empty) this database")
    args = parser.parse_args()

    run_id = f"bench-{os.getpid()}"
    db = claim_redis_db(run_id) if args.redis_db is None else args.redis_db
    workdir = Path(tempfile.mkdtemp(prefix=f"taskhub-{run_id}-"))
    stage = Stage(f"redis://127.0.0.1:6379/{db}", workdir)
    os.environ.update(_env(stage, (0, 0), {}))  # this process builds messages for the stage
    green = ["-P", "gevent", f"--autoscale={TASKHUB_AUTOSCALE}"]
    stock = [f"--autoscale={STOCK_AUTOSCALE}"]
    limited_count = max(10, int(args.rate_limit * args.limited_seconds))
    results: dict[str, list[Outcome]] = {}
    try:
        for round_number in range(1, args.rounds + 1):
            base = ID_BASE + round_number * 10_000_000
            runs = [
                (
                    "stock",
                    dict(
                        count=args.stock_checkins,
                        latency_ms=LATENCY_MS,
                        argv_tail=stock,
                        processes=1,
                    ),
                ),
                (
                    "taskhub",
                    dict(
                        count=args.checkins,
                        latency_ms=LATENCY_MS,
                        argv_tail=green,
                        processes=args.processes,
                    ),
                ),
                (
                    "ceiling",
                    dict(
                        count=args.checkins,
                        latency_ms=0.0,
                        argv_tail=green,
                        processes=args.processes,
                    ),
                ),
                (
                    "limited",
                    dict(
                        count=limited_count,
                        latency_ms=LATENCY_MS,
                        argv_tail=green,
                        processes=args.processes,
                        rate_limit=args.rate_limit,
                    ),
                ),
                (
                    "zipf",
                    dict(
                        count=args.checkins // 2,
                        latency_ms=LATENCY_MS,
                        argv_tail=green,
                        processes=args.processes,
                        venues=args.venues,
                    ),
                ),
            ]
            if round_number % 2 == 0:
                runs.reverse()
            for name, options in runs:
                outcome = drain(name, stage, id_base=base, **options)
                results.setdefault(name, []).append(outcome)
                console.print(
                    f"round {round_number}: {name} {outcome.rate:,.0f}/s "
                    f"({outcome.count} in {outcome.seconds:.1f}s) pool {outcome.pool_summary()}"
                )
    finally:
        stage.redis().flushdb()
        if args.redis_db is None:
            release_redis_db(db, run_id)
    print(report(results, args.rate_limit))
    return 0


def report(results: dict[str, list[Outcome]], rate_limit: int) -> str:
    table = Table(title="check-ins resolved (medians over rounds)")
    for column in (
        "stage",
        "check-ins/s",
        "wait p50 ms",
        "wait p99 ms",
        "pool first->peak->last",
        "venue requests",
        "429s",
        "cache hits",
    ):
        table.add_column(column)
    for name, outcomes in results.items():
        waits = [w for outcome in outcomes for w in outcome.waits]
        last = outcomes[-1]
        hits = sum(v for k, v in last.cache.items() if k.endswith(":hit"))
        lookups = sum(v for k, v in last.cache.items() if k.endswith((":hit", ":miss")))
        table.add_row(
            name,
            f"{median(o.rate for o in outcomes):,.1f}",
            _ms(waits, 0.50),
            _ms(waits, 0.99),
            last.pool_summary(),
            f"{median(o.venue_ok + o.venue_429s for o in outcomes):,.0f}",
            f"{median(o.venue_429s for o in outcomes):,.0f}",
            f"{hits / lookups:.0%}" if lookups else "-",
        )
    console.print(table)
    taskhub = median(o.rate for o in results["taskhub"])
    stock = median(o.rate for o in results["stock"])
    ceiling = median(o.rate for o in results["ceiling"])
    limited = results["limited"]
    achieved = median(o.venue_ok / o.seconds for o in limited)
    limited_rate = median(o.rate for o in limited)
    too_many = int(median(o.venue_429s for o in limited))
    requests = int(median(o.venue_ok + o.venue_429s for o in limited))
    return (
        f"checkins: taskhub={taskhub:,.0f}/s stock={stock:,.1f}/s vs_stock={taskhub / stock:.2f} "
        f"ceiling={ceiling:,.0f}/s vs_ceiling={taskhub / ceiling:.2f} "
        f"limited={limited_rate:,.0f}/s limit_use={achieved / rate_limit:.2f} "
        f"429s={too_many} requests={requests}"
    )


if __name__ == "__main__":
    sys.exit(main())
