"""What tracing costs a worker: check-ins resolved per second with tracing off and on.

Both contestants are the recommended worker (gevent, one process per core) draining the same
burst of check-ins against a 0 ms stand-in, so that the worker's CPU, not the upstream, is what
limits them and any cost of tracing shows. "on" exports every span over OTLP/HTTP to a receiver
in this process that counts requests without decoding them. Rounds alternate who goes first.

Last line: `tracing: off=X/s on=Y/s on_vs_off=Y/X spans_posts=N` (one line).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from bench.checkins import TASKHUB_AUTOSCALE, Outcome, Stage, console, drain
from bench.harness import median
from rig.isolation import claim_redis_db, release_redis_db
from rig.otlp import OtlpReceiver

ID_BASE = 8_000_000_000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkins", type=int, default=10_000, help="per stage")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="the stand-in's")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--redis-db", type=int, help="use (and empty) this database")
    args = parser.parse_args()

    run_id = f"bench-{os.getpid()}"
    db = claim_redis_db(run_id) if args.redis_db is None else args.redis_db
    stage = Stage(
        f"redis://127.0.0.1:6379/{db}", Path(tempfile.mkdtemp(prefix=f"taskhub-{run_id}-"))
    )
    os.environ.update(
        {"TASKHUB_BROKER_URL": stage.redis_url, "TASKHUB_RESULT_BACKEND": stage.redis_url}
    )
    os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    receiver = OtlpReceiver(keep=False).start()
    green = ["-P", "gevent", f"--autoscale={TASKHUB_AUTOSCALE}"]
    contestants = {
        "off": {},
        # A batch at least every second: a drain's workers are killed at its end, and spans left
        # in a 5 s batch would go unexported (and uncounted).
        "on": {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "1000"},
    }
    results: dict[str, list[Outcome]] = {}
    try:
        for round_number in range(1, args.rounds + 1):
            order = sorted(contestants, reverse=round_number % 2 == 0)
            for name in order:
                outcome = drain(
                    name,
                    stage,
                    count=args.checkins,
                    latency_ms=args.latency_ms,
                    argv_tail=green,
                    processes=args.processes,
                    id_base=ID_BASE + round_number * 10_000_000 + (name == "on") * 1_000_000,
                    worker_env=contestants[name],
                )
                results.setdefault(name, []).append(outcome)
                console.print(
                    f"round {round_number}: tracing {name} {outcome.rate:,.0f}/s "
                    f"({outcome.count} in {outcome.seconds:.1f}s)"
                )
    finally:
        receiver.stop()
        stage.redis().flushdb()
        if args.redis_db is None:
            release_redis_db(db, run_id)
    off = median([o.rate for o in results["off"]])
    on = median([o.rate for o in results["on"]])
    print(
        f"tracing: off={off:,.0f}/s on={on:,.0f}/s on_vs_off={on / off:.2f} "
        f"spans_posts={receiver.requests}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
