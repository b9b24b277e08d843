"""`taskhub status [--json] [--watch] [--max-age S]`: the queues, bridges, workers and dead
letters at a glance, read from Redis. With --max-age it is a check for cron or CI: it exits 1
when a queue's oldest task waited longer than that and no ready worker consumes the queue.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import redis
from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from taskhub.arguments import positive_seconds
from taskhub.fitted_table import Field, FittedTable
from taskhub.routes import routes_or_exit
from taskhub.settings import Settings
from taskhub.telemetry import snapshot
from taskhub.telemetry.beats import age
from taskhub.telemetry.snapshot import Snapshot
from taskhub.terminal import visible

FIRST_RATE_SAMPLE_SECONDS = 1.0
"""A single `taskhub status` reads twice, this far apart, to give each queue's in rate."""
EXIT_STALLED = 1

QUEUE_FIELDS = (
    Field("queue", key=True),
    *(
        Field(name, number=True)
        for name in ("depth", "waiting", "unacked", "oldest", "in/s", "out/s", "consumers")
    ),
)
BRIDGE_FIELDS = (
    Field("bridge", key=True),
    Field("host", key=True),
    Field("connected"),
    Field("in flight", number=True),
    Field("held", number=True),
    Field("paused"),
    Field("spool", number=True),
    Field("seen", number=True),
)
WORKER_FIELDS = (
    Field("worker", key=True),
    Field("pool"),
    Field("size (min-max)"),
    Field("active", number=True),
    Field("queues"),
    Field("ready"),
    Field("progress", number=True),
    Field("seen", number=True),
)
LETTER_FIELDS = (
    Field("dead letters by reason", key=True),
    Field("last hour", number=True),
    Field("total", number=True),
)


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = commands.add_parser(
        "status", help="queues, bridges, workers and dead letters at a glance"
    )
    status.add_argument("--json", action="store_true", help="one JSON object (a line per reading)")
    status.add_argument("--watch", action="store_true", help="read again every --interval")
    status.add_argument(
        "--interval", type=positive_seconds, default=2.0, help="seconds (default 2)"
    )
    status.add_argument(
        "--max-age",
        type=positive_seconds,
        metavar="SECONDS",
        help="exit 1 if a queue's oldest task is older than this and nothing consumes it",
    )


def run(settings: Settings, args: argparse.Namespace) -> int:
    client = redis.Redis.from_url(
        settings.broker_url.get_secret_value(), socket_timeout=5, socket_connect_timeout=2
    )
    queues = routes_or_exit(settings).queues
    console = Console()
    try:
        first = snapshot.take(client, settings.key_prefix, queues)
        time.sleep(min(args.interval, FIRST_RATE_SAMPLE_SECONDS))
        reading = snapshot.take(client, settings.key_prefix, queues, first)
        if not args.watch:
            _show(console, reading, args)
            return _verdict(reading, args.max_age)
        return _watch(console, client, settings.key_prefix, queues, reading, args)
    except redis.RedisError as error:
        raise SystemExit(f"taskhub: status: Redis unreachable: {error}") from None


def _watch(
    console: Console,
    client: redis.Redis,
    key_prefix: str,
    queues: tuple[str, ...],
    reading: Snapshot,
    args: argparse.Namespace,
) -> int:
    try:
        if args.json:
            while True:
                _show(console, reading, args)
                time.sleep(args.interval)
                reading = snapshot.take(client, key_prefix, queues, reading)
        with Live(_tables(reading), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(args.interval)
                reading = snapshot.take(client, key_prefix, queues, reading)
                live.update(_tables(reading), refresh=True)
    except KeyboardInterrupt:
        return _verdict(reading, args.max_age)


def _show(console: Console, reading: Snapshot, args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(reading.to_json()), flush=True)
    else:
        console.print(_tables(reading))


def _verdict(reading: Snapshot, max_age: float | None) -> int:
    if max_age is None:
        return 0
    stalled = reading.stalled(max_age)
    for queue in stalled:  # on stderr: with --json, stdout holds JSON only
        print(
            f"status: queue {visible(queue.state.name)}: oldest task waited "
            f"{queue.state.oldest_age:.0f}s (> {max_age:g}s) and no ready worker consumes it",
            file=sys.stderr,
        )
    return EXIT_STALLED if stalled else 0


def _tables(reading: Snapshot) -> Group:
    now = reading.taken_at
    queues = FittedTable("queues", QUEUE_FIELDS)
    for q in reading.queues:
        state = q.state
        oldest = Text(_seconds(state.oldest_age))
        if state.oldest_age > 0 and not state.consumers:
            oldest.stylize("bold red")
        queues.add_row(
            state.name,
            str(state.depth),
            str(state.waiting),
            str(state.unacked),
            oldest,
            "-" if q.in_rate is None else f"{q.in_rate:.1f}",
            f"{q.out_rate:.1f}",
            str(state.consumers),
        )
    bridges = FittedTable("bridges", BRIDGE_FIELDS)
    for b in reading.bridges:
        bridges.add_row(
            b.client_id,
            f"{b.hostname}:{b.pid}",
            _yes_no(b.connected and b.subscribed),
            str(b.in_flight),
            str(b.held),
            b.paused or ("leaving" if b.leaving else "-"),
            str(b.spool_depth),
            f"{age(b, now):.0f}s ago",
        )
    workers = FittedTable("workers", WORKER_FIELDS)
    for w in reading.workers:
        workers.add_row(
            f"{w.hostname} ({w.pid})",
            w.pool,
            f"{w.pool_current} ({w.pool_min}-{w.pool_max})",
            str(w.active),
            ",".join(w.queues),
            _yes_no(w.ready),
            f"{w.progress_age:.0f}s ago",
            f"{age(w, now):.0f}s ago",
        )
    letters = FittedTable("dead letters", LETTER_FIELDS)
    for reason in sorted(reading.letters_total):
        letters.add_row(
            reason,
            str(reading.letters_last_hour.get(reason, 0)),
            str(reading.letters_total[reason]),
        )
    parts: list[FittedTable | Text] = [queues]
    parts.append(bridges if reading.bridges else Text("bridges: none recorded a beat"))
    parts.append(workers if reading.workers else Text("workers: none recorded a beat"))
    parts.append(letters if reading.letters_total else Text("dead letters: none"))
    return Group(*parts)


SHOWN_IN_SECONDS_BELOW = 120
SHOWN_IN_MINUTES_BELOW = 2 * 3600
"""An age reads in the unit that keeps it a small number: 90.0s, 45.0m, 3.5h."""


def _seconds(value: float) -> str:
    if value <= 0:
        return "-"
    if value < SHOWN_IN_SECONDS_BELOW:
        return f"{value:.1f}s"
    if value < SHOWN_IN_MINUTES_BELOW:
        return f"{value / 60:.1f}m"
    return f"{value / 3600:.1f}h"


def _yes_no(flag: bool) -> Text:
    return Text("yes", style="green") if flag else Text("NO", style="bold red")
