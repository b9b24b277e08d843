"""What Mosquitto's tighter autosave costs and buys: the repo's old `autosave_interval 30` against
its config now (a snapshot every 100 changes), run in turns on private brokers, as rates, ratios
and losses.

Per config and round:
- **backlog**: N QoS 1 messages published into an offline persistent session (the bridge down),
  timed to the last PUBACK; then the broker is SIGKILLed right after that PUBACK and restarted,
  and `lost` counts the acked messages the session no longer delivers;
- **live**: N QoS 1 messages through a connected subscriber that acks at once (the bridge up),
  timed from the first publish to the last delivery.

`--changes N` runs the new config with a snapshot every N changes instead (1: after every one).

Last line: `broker_autosave: backlog_old=X/s backlog_new=Y/s backlog_ratio=Y/X live_old=..
live_new=.. live_ratio=.. lost_old=A/R lost_new=B/R` (losses summed over the R rounds' messages).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.harness import median
from rig.broker_crash import (
    SUBSCRIBER_ID,
    TOPIC,
    WAIT_SECONDS,
    connected,
    numbered,
    publish_then_crash,
    subscribe,
)
from rig.servers import MosquittoServer

OLD_AUTOSAVE = {"autosave_on_changes": "false", "autosave_interval": "30"}
"""The repo's config before issue 11: a snapshot every 30 seconds."""
NEW_AUTOSAVE: Mapping[str, str] = {}
"""The repo's config as it is: `scripts/mosquitto.conf` unchanged."""
DEFAULT_MESSAGES = 2000
DEFAULT_ROUNDS = 3


def _broker(root: Path, name: str, settings: Mapping[str, str]) -> MosquittoServer:
    broker = MosquittoServer(Path(tempfile.mkdtemp(dir=root, prefix=name)), settings=settings)
    broker.start()
    return broker


def live_seconds(broker: MosquittoServer, count: int) -> float:
    """From the first publish to the `count`th delivery through a connected subscriber."""
    delivered = 0
    done = threading.Event()

    def on_message(*args: object) -> None:
        nonlocal delivered
        delivered += 1
        if delivered == count:
            done.set()

    with connected(broker.port, SUBSCRIBER_ID, True, on_message) as subscriber:
        subscribe(subscriber)
        with connected(broker.port, "live-publisher", persistent=False) as publisher:
            started = time.perf_counter()
            for n in range(count):
                publisher.publish(TOPIC, numbered(n), qos=1)
            if not done.wait(WAIT_SECONDS + count / 100):
                raise TimeoutError(f"{delivered} of {count} messages delivered")
            return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.broker_autosave", description=__doc__)
    parser.add_argument("--messages", type=int, default=DEFAULT_MESSAGES)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument(
        "--changes",
        type=int,
        help="run the new config with `autosave_interval N` (changes per snapshot) instead",
    )
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    new = NEW_AUTOSAVE if args.changes is None else {"autosave_interval": str(args.changes)}
    configs = {"old": OLD_AUTOSAVE, "new": new}
    backlog: dict[str, list[float]] = {name: [] for name in configs}
    live: dict[str, list[float]] = {name: [] for name in configs}
    lost: dict[str, int] = dict.fromkeys(configs, 0)
    root = Path(tempfile.mkdtemp(prefix="taskhub-bench-autosave-"))
    try:
        for round_ in range(args.rounds):
            order = list(configs) if round_ % 2 == 0 else list(reversed(configs))
            for name in order:
                broker = _broker(root, name, configs[name])
                try:
                    live[name].append(args.messages / live_seconds(broker, args.messages))
                finally:
                    broker.stop()
                broker = _broker(root, name, configs[name])
                try:
                    outcome = publish_then_crash(broker, args.messages)
                finally:
                    broker.stop()
                backlog[name].append(args.messages / outcome.publish_seconds)
                lost[name] += outcome.lost
                console.print(
                    f"round {round_ + 1} {name}: live {live[name][-1]:,.0f}/s, "
                    f"backlog {backlog[name][-1]:,.0f}/s, lost {outcome.lost}/{args.messages}"
                )
    finally:
        shutil.rmtree(root, ignore_errors=True)

    table = Table("config", "live msg/s", "backlog msg/s", "lost after SIGKILL", title="medians")
    total = args.messages * args.rounds
    for name in configs:
        table.add_row(
            name,
            f"{median(live[name]):,.0f}",
            f"{median(backlog[name]):,.0f}",
            f"{lost[name]}/{total}",
        )
    console.print(table)
    old_backlog, new_backlog = median(backlog["old"]), median(backlog["new"])
    old_live, new_live = median(live["old"]), median(live["new"])
    print(
        f"broker_autosave: backlog_old={old_backlog:.0f}/s backlog_new={new_backlog:.0f}/s "
        f"backlog_ratio={new_backlog / old_backlog:.3f} live_old={old_live:.0f}/s "
        f"live_new={new_live:.0f}/s live_ratio={new_live / old_live:.3f} "
        f"lost_old={lost['old']}/{total} lost_new={lost['new']}/{total}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
