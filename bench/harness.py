"""What every benchmark needs: its own Redis database and Mosquitto, persistent MQTT sessions
pre-loaded with messages, the contestants' processes, and honest summaries (medians, peak RSS).

Benchmarks run beside other work on shared machines, so each one runs its contestants in the same
run, alternating, and reports ratios.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis

from rig.isolation import claim_redis_db, release_redis_db
from rig.processes import wait_for
from rig.servers import MosquittoServer

TOPIC_PREFIX = "bench/"
POLL_SECONDS = 0.002


@dataclass(frozen=True, slots=True)
class Stage:
    """Where one benchmark run lives: its Redis database, Mosquitto, and scratch directory."""

    redis_url: str
    mqtt_port: int
    workdir: Path

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    def keepalive_drops(self, client_id: str) -> int:
        """How often the broker has dropped `client_id` for a missed keepalive, from its log."""
        log = self.workdir / "mosquitto" / "mosquitto.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        return text.count(f"Client {client_id} has exceeded timeout")

    def env(self, client_id: str) -> dict[str, str]:
        """TASKHUB_ variables that put a taskhub process (or this one) on this stage."""
        return {
            "TASKHUB_BROKER_URL": self.redis_url,
            "TASKHUB_RESULT_BACKEND": self.redis_url,
            "TASKHUB_TOPIC_PREFIX": TOPIC_PREFIX,
            "TASKHUB_MQTT__PORT": str(self.mqtt_port),
            "TASKHUB_MQTT__CLIENT_ID": client_id,
            "TASKHUB_BRIDGE__SPOOL_DIR": str(self.workdir / "spool"),
            # Nothing drains the queues while a contestant fills them: no backpressure pause.
            "TASKHUB_BRIDGE__HIGH_WATERMARK": "100000000",
            "TASKHUB_BRIDGE__LOW_WATERMARK": "50000000",
        }


@contextmanager
def stage(redis_db: int | None = None) -> Iterator[Stage]:
    """A claimed Redis database (or `redis_db`, emptied) and a private Mosquitto that keeps
    queued messages in memory only, with no per-session limit."""
    run_id = f"bench-{uuid.uuid4().hex[:8]}"
    claimed = redis_db is None
    db = claim_redis_db(run_id) if redis_db is None else redis_db
    workdir = Path(tempfile.mkdtemp(prefix=f"taskhub-{run_id}-"))
    broker = MosquittoServer(workdir / "mosquitto", persistent=False)
    broker.start()
    found = Stage(f"redis://127.0.0.1:6379/{db}", broker.port, workdir)
    found.redis().flushdb()
    try:
        yield found
    finally:
        broker.stop()
        found.redis().flushdb()
        if claimed:
            release_redis_db(db, run_id)


def use_stage(found: Stage, client_id: str) -> None:
    """Point this process's taskhub settings at `found`; call before it first reads them."""
    os.environ.update(found.env(client_id))


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """rig's wait, polling finely enough to time a run by; the monotonic time it first held."""
    return wait_for(condition, timeout, what, poll=POLL_SECONDS)


def peak_rss_mb(pid: int) -> float:
    """A live process's peak resident set size (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))
    return ordered[index]
