"""What fsyncing Redis's AOF before every reply costs taskhub's bridge: it drains the same N
check-ins into two private Redis servers run with docker-compose.yml's arguments, one with
compose's `appendfsync always`, one with Redis's default `everysec`, rotating who goes first.

    python -m bench.redis_fsync [--messages 20000] [--rounds 3]

Also times a one-command MULTI/EXEC on each (what a lone message's batch waits for). Last line:
`redis_fsync: always=X/s everysec=Y/s ratio=X/Y always_exec_ms=A everysec_exec_ms=B`.
"""

from __future__ import annotations

import argparse
import dataclasses
import secrets
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import redis

from bench.bridge_throughput import FILTERS, client_id, drain_taskhub, preload
from bench.contestants import open_session
from bench.harness import Stage, median, stage
from rig.compose import resolved, service
from rig.servers import ConfiguredRedisServer

MODES = ("always", "everysec")
EXEC_SAMPLES = 500
"""One-command transactions timed per server and round."""


def compose_redis_arguments(mode: str, password: str) -> list[str]:
    """docker-compose.yml's redis-server arguments, with `--appendfsync mode`."""
    command = resolved(service("redis")["command"], {"REDIS_PASSWORD": password})
    arguments = list(command[1:])
    arguments[arguments.index("--appendfsync") + 1] = mode
    return arguments


@contextmanager
def redis_servers(found: Stage) -> Iterator[dict[str, ConfiguredRedisServer]]:
    """One private Redis per mode, with compose's arguments, on the stage's disk."""
    password = secrets.token_hex(12)
    with ExitStack() as stack:
        servers = {}
        for mode in MODES:
            arguments = compose_redis_arguments(mode, password)
            server = ConfiguredRedisServer(found.workdir / f"redis-{mode}", arguments, password)
            server.start()
            stack.callback(server.stop)
            servers[mode] = server
        yield servers


def exec_ms(url: str) -> float:
    """Median milliseconds of a one-command MULTI/EXEC: one fsync under `always`."""
    client = redis.Redis.from_url(url)
    timings = []
    try:
        for n in range(EXEC_SAMPLES):
            started = time.perf_counter()
            transaction = client.pipeline(transaction=True)
            transaction.set(f"bench:exec:{n % 10}", n)
            transaction.execute()
            timings.append((time.perf_counter() - started) * 1000)
    finally:
        client.close()
    return median(timings)


def run(messages: int, rounds: int, redis_db: int | None) -> int:
    speeds: dict[str, list[float]] = {mode: [] for mode in MODES}
    latencies: dict[str, list[float]] = {mode: [] for mode in MODES}
    with stage(redis_db) as found, redis_servers(found) as servers:
        on = {mode: dataclasses.replace(found, redis_url=servers[mode].url) for mode in MODES}
        for mode in MODES:
            open_session(found, client_id(mode), FILTERS)
        for round_number in range(rounds):
            seconds = preload(found, messages, seed=round_number + 1)
            order = MODES[round_number % 2 :] + MODES[: round_number % 2]
            line = [f"round {round_number + 1}: preload {messages / seconds:,.0f}/s"]
            for mode in order:
                on[mode].redis().flushdb()
                speed, _ = drain_taskhub(on[mode], messages, None, session=mode)
                speeds[mode].append(speed)
                latencies[mode].append(exec_ms(on[mode].redis_url))
                line.append(f"{mode} {speed:,.0f}/s exec {latencies[mode][-1]:.2f} ms")
            print(", ".join(line), file=sys.stderr)
    always, everysec = (median(speeds[mode]) for mode in MODES)
    always_ms, everysec_ms = (median(latencies[mode]) for mode in MODES)
    print(
        f"redis_fsync: always={always:,.0f}/s everysec={everysec:,.0f}/s "
        f"ratio={always / everysec:.2f} always_exec_ms={always_ms:.2f} "
        f"everysec_exec_ms={everysec_ms:.2f}"
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis-db", type=int, help="use (and empty) this Redis database")
    args = parser.parse_args()
    return run(args.messages, args.rounds, args.redis_db)


if __name__ == "__main__":
    sys.exit(main())
