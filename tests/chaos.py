"""The chaos suite: publish N sequenced check-ins while killing every process, then count effects.

It runs everything on its own servers (Redis with an AOF fsynced on every write, Mosquitto with
the repo's config) on spare loopback ports, so it can kill and restart them. Each check-in's effect
is one entry in the resolved stream; a missing entry is a lost message, a second entry a double
effect. A missing message the broker had acked before a SIGKILL, and of which Redis holds no trace,
is counted apart as the broker's loss. Run it with `scripts/chaos [--messages N] [--rate R]`; it
exits non-zero unless taskhub lost nothing and did nothing twice, and the broker lost no more than
its config's bound.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import redis
from rich.console import Console
from rich.table import Table

from rig.isolation import free_port
from rig.processes import (
    BRIDGE_READY,
    WORKER_READY,
    Process,
    celery,
    python_module,
    wait_for,
)
from rig.servers import MosquittoServer, RedisServer, repo_autosave_changes
from taskhub import redis_keys
from taskhub.demo.feed import checkin_tweets
from taskhub.mqtt import connect_arguments, new_client
from taskhub.settings import MqttSettings
from taskhub.task_messages import deterministic_task_id

GEVENT, PREFORK = "gevent", "prefork"
DEFAULT_MESSAGES = 20_000
DEFAULT_RATE = 400.0
KEY_PREFIX = "chaos"
RESOLVED_STREAM = f"{KEY_PREFIX}:checkins:resolved"
DUPLICATES = f"{KEY_PREFIX}:stats:duplicates_absorbed"
ID_BASE = 5_000_000_000
CHECKIN_TASK = "tasks.checkins.resolve_checkin"
"""The check-in route's task: with the tweet id it names each message's task id."""
VISIBILITY = 15
SETTLE_TIMEOUT = 900.0
"""Longest wait for every effect after the last message is published."""
BROKER_BACKLOG = 300
"""Messages the broker acks for the killed bridge before it is SIGKILLed itself (issue 11): the
last ones of the stream, kept back from the steady feed so every run has this backlog; more than
the broker's autosave interval, so a run shows what the interval bounds."""
LOST_PER_BROKER_KILL = repo_autosave_changes()
"""What the repo's mosquitto.conf may lose to one SIGKILL: the changes since its last snapshot
(tests/test_broker_config.py)."""
BROKER_STEP_TIMEOUT = 60.0
"""Longest wait for the backlog's PUBACKs, or for the publisher to see the broker gone."""
QUIET_SECONDS = 15.0
"""With only the broker's possible losses missing, how long nothing may be left to run before
they are counted as lost (an MQTT redelivery would show up as a queued task meanwhile)."""
SHARE_GROUP = "chaos"
"""Both bridges split the stream in this group, until one leaves it for good."""
POISON_ROUTES = "tests.support.poison_routes:ROUTES"
"""The project's routes plus a `poison` route whose task SIGKILLs the process running it."""
REDIS_FULL_SECONDS = 5.0
"""How long Redis stays at maxmemory: part of the scenario, as the Redis outage's 2 s are."""


@dataclass
class Event:
    at: float
    what: str


@dataclass
class Report:
    messages: int
    lost: int
    double_effects: int
    redelivered: int
    seconds: float
    lost_by_broker: int = 0
    """Acked by the broker before one of its SIGKILLs, never seen by the bridge, no effect."""
    broker_kills: int = 0
    worker_lost_letters: int = 0
    """`worker_lost` dead letters: exactly one, the poison task's."""
    events: list[Event] = field(default_factory=list)
    bridge_lines: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        broker_bound = self.broker_kills * LOST_PER_BROKER_KILL
        return (
            self.lost == 0
            and self.double_effects == 0
            and self.lost_by_broker <= broker_bound
            and self.worker_lost_letters == 1
        )

    def last_line(self) -> str:
        return (
            f"chaos: messages={self.messages} lost={self.lost} "
            f"double_effects={self.double_effects} redelivered={self.redelivered} "
            f"seconds={self.seconds:.0f} lost_by_broker={self.lost_by_broker}"
        )


class Chaos:
    """Owns the private servers and taskhub processes of one chaos run."""

    def __init__(self, workdir: Path, messages: int, rate: float, pool: str = GEVENT) -> None:
        self.workdir = workdir
        self.pool = pool
        self.messages = messages
        self.rate = rate
        self.redis = RedisServer(workdir / "redis")
        self.mosquitto = MosquittoServer(workdir / "mosquitto")
        self.started = time.monotonic()
        self.events: list[Event] = []
        standin_port, venue_port = free_port(), free_port()
        self.env = {
            "TASKHUB_BROKER_URL": "",
            "TASKHUB_RESULT_BACKEND": "",
            "TASKHUB_KEY_PREFIX": KEY_PREFIX,
            "TASKHUB_TOPIC_PREFIX": f"chaos-{os.getpid()}/",
            "TASKHUB_MQTT__PORT": str(self.mosquitto.port),
            "TASKHUB_MQTT__CLIENT_ID": f"chaos-{os.getpid()}-bridge",
            "TASKHUB_BRIDGE__SPOOL_DIR": str(workdir / "spool"),
            "TASKHUB_STANDIN__PORT": str(standin_port),
            "TASKHUB_STANDIN__VENUE_PORT": str(venue_port),
            "TASKHUB_STANDIN__LATENCY_MS": "2",
            "TASKHUB_HTTP__SHORTLINK_BASE_URL": f"http://127.0.0.1:{standin_port}/s",
            "TASKHUB_HTTP__VENUE_API_BASE_URL": f"http://127.0.0.1:{venue_port}/v2",
            "TASKHUB_TASKS__SOFT_TIME_LIMIT": "8",
            "TASKHUB_TASKS__TIME_LIMIT": "10",
            "TASKHUB_TASKS__RETRY_BACKOFF_MAX": "2",
            "TASKHUB_TASKS__VISIBILITY_TIMEOUT": str(VISIBILITY),
            "TASKHUB_TASKS__UNACKED_RESTORE_INTERVAL": "1",
            "TASKHUB_TASKS__SOFT_SHUTDOWN_TIMEOUT": "2",
            "TASKHUB_TASKS__RESULT_EXPIRES": "600",
            "REMAP_SIGTERM": "SIGQUIT",
            "TASKHUB_MQTT__SHARE_GROUP": SHARE_GROUP,
            "TASKHUB_ROUTES": POISON_ROUTES,
            # Several bridges and workers on one host: probe servers off (their own tests
            # cover them), or every process after the first would refuse to start.
            "TASKHUB_TELEMETRY__BRIDGE_PORT": "0",
            "TASKHUB_TELEMETRY__WORKER_PORT": "0",
        }
        self.processes: list[Process] = []
        self.publisher: SequencedPublisher | None = None
        self.acked_before_broker_kill: set[int] = set()
        """Sequence numbers the broker had acked when it was SIGKILLed: only these can it lose."""
        self.broker_kills = 0

    def note(self, what: str) -> None:
        self.events.append(Event(time.monotonic() - self.started, what))

    def start(self) -> None:
        self.redis.start()
        self.mosquitto.start()
        self.env["TASKHUB_BROKER_URL"] = self.redis.url
        self.env["TASKHUB_RESULT_BACKEND"] = self.redis.url
        self.standin = self._process("standin", python_module("taskhub.cli", "standin"))
        health = f"http://127.0.0.1:{self.env['TASKHUB_STANDIN__PORT']}/health"
        wait_for(lambda: _answers(health), 30, "the stand-in")
        self.workers = [self._worker(name) for name in ("worker-a", "worker-b")]
        self.bridge = self._process("bridge", python_module("bridge"))
        self.bridge.wait_output(BRIDGE_READY, timeout=30, count=2)
        self.leaver = self._process("bridge-b", python_module("bridge"), client_id="bridge-b")
        self.leaver.wait_output(BRIDGE_READY, timeout=30, count=2)
        self.note("all processes up")

    def _process(self, name: str, argv: list[str], client_id: str = "bridge") -> Process:
        env = {**self.env, "TASKHUB_MQTT__CLIENT_ID": f"chaos-{os.getpid()}-{client_id}"}
        process = Process(name, argv, self.workdir, env).start()
        self.processes.append(process)
        return process

    def _worker(self, name: str) -> Process:
        pool = ["-P", "gevent", "--autoscale=50,4"] if self.pool == GEVENT else ["-c", "4"]
        argv = celery("worker", *pool, "-l", "INFO", "-n", f"{name}-{os.getpid()}@%h")
        process = self._process(name, argv)
        process.wait_output(WORKER_READY, timeout=60)
        return process

    def stop(self) -> None:
        for process in self.processes:
            process.kill()
        self.redis.stop()
        self.mosquitto.stop()

    # The faults, each followed by a recovery.

    def kill_bridge(self) -> None:
        self.bridge.kill()
        self.note("SIGKILL bridge")
        self.bridge.start().wait_output(BRIDGE_READY, timeout=60, count=2)
        self.note("bridge restarted")

    def kill_pool_child(self) -> None:
        worker = self.workers[0]
        children = _children(worker.pid)
        if not children:
            self.note("no pool child to kill")
            return
        victim = random.choice(children)
        os.kill(victim, signal.SIGKILL)
        self.note(f"SIGKILL pool child {victim} of worker-a")

    def stop_worker(self) -> None:
        """SIGTERM: the soft shutdown requeues what worker-a still runs after its grace."""
        worker = self.workers[0]
        code = worker.terminate(timeout=60)
        self.note(f"SIGTERM worker-a (exit {code})")
        worker.start().wait_output(WORKER_READY, timeout=60)
        self.note("worker-a restarted")

    def kill_worker(self) -> None:
        worker = self.workers[1]
        worker.kill()
        self.note("SIGKILL worker-b (whole process group)")
        worker.start().wait_output(WORKER_READY, timeout=60)
        self.note("worker-b restarted")

    def restart_redis(self) -> None:
        self.redis.kill()
        self.note("SIGKILL redis")
        time.sleep(2)  # the outage itself: part of the scenario
        self.redis.start()
        self.note("redis restarted (AOF)")

    def restart_mosquitto(self) -> None:
        # Mosquitto 2.0 forgets a share group's subscriptions at a restart (README, "What the MQTT
        # broker's settings buy"): what is published before a member subscribes again is dropped.
        # The feed waits until the bridge has, so this fault tests taskhub, not that limitation.
        publisher = self._hold_feed()
        subscribed = self.bridge.output_of_last_start().count(BRIDGE_READY)
        self.mosquitto.stop()
        self.note("SIGTERM mosquitto")
        self.mosquitto.start()
        self.note("mosquitto restarted (persistence)")
        self.bridge.wait_output(BRIDGE_READY, timeout=60, count=subscribed + 1)
        publisher.resume()
        self.note("bridge subscribed again: feed resumed")

    def _hold_feed(self) -> SequencedPublisher:
        publisher = self.publisher
        assert publisher is not None
        publisher.hold(BROKER_STEP_TIMEOUT)
        self.note("feed held, everything published acked")
        return publisher

    def kill_mosquitto(self) -> None:
        """Issue 11: the bridge down, the broker holding what it acked for it, then SIGKILLed."""
        publisher = self._hold_feed()  # see restart_mosquitto
        self.bridge.kill()
        self.note("SIGKILL bridge")
        # A message published while disconnected is only republished at the end (confirm).
        wait_for(publisher.client.is_connected, BROKER_STEP_TIMEOUT, "the publisher to connect")
        backlog = publisher.publish_held_back()
        wait_for(
            lambda: all(_acked(publisher.infos[i]) for i in backlog),
            BROKER_STEP_TIMEOUT,
            "the broker to ack the backlog",
        )
        self.mosquitto.kill()
        self.broker_kills += 1
        # Once the publisher has read every PUBACK the dead broker sent, the set is complete.
        wait_for(
            lambda: not publisher.client.is_connected(),
            BROKER_STEP_TIMEOUT,
            "the publisher to see the broker gone",
        )
        self.acked_before_broker_kill |= publisher.acked_sequence()
        self.note(f"SIGKILL mosquitto ({len(self.acked_before_broker_kill)} acked so far)")
        self.mosquitto.start()
        self.note("mosquitto restarted (persistence)")
        self.bridge.start().wait_output(BRIDGE_READY, timeout=60, count=2)
        publisher.resume()
        self.note("bridge restarted: feed resumed")

    def replica_leaves(self) -> None:
        """A scale-down: the second bridge is SIGTERMed for good and leaves the share group."""
        code = self.leaver.terminate(timeout=60)
        left = "leaving the share group" in self.leaver.output()
        self.note(f"SIGTERM bridge-b for good (exit {code}, left the group: {left})")

    def poison(self) -> None:
        """A task that SIGKILLs whatever runs it: its worker dies, and dies again, while the
        stream and the other faults go on, until the task is dead-lettered as worker_lost (the
        settle wait waits for that letter too)."""
        settings = MqttSettings(port=self.mosquitto.port)
        client = new_client(settings, f"chaos-{os.getpid()}-poisoner", persistent=False)
        client.connect(**connect_arguments(settings, persistent=False))
        client.loop_start()
        topic = self.env["TASKHUB_TOPIC_PREFIX"] + "poison/chaos/kill"
        client.publish(topic, b"{}", qos=1).wait_for_publish(BROKER_STEP_TIMEOUT)
        client.disconnect()
        client.loop_stop()
        self.note("published a task that kills its worker")

    def supervise(self) -> None:
        """Restart a worker that died by no fault of the suite's (the poison task), as systemd
        or Kubernetes would."""
        for worker in self.workers:
            assert worker.popen is not None
            if worker.popen.poll() is not None:
                self.note(f"{worker.name} died (the poison task): restarted")
                worker.start().wait_output(WORKER_READY, timeout=60)

    def fill_redis(self) -> None:
        """Redis at maxmemory (noeviction) for a while: the bridge pauses, workers wait."""
        client = redis.Redis.from_url(self.redis.url)
        try:
            client.config_set("maxmemory", int(client.info("memory")["used_memory"]))
            self.note("redis at maxmemory")
            time.sleep(REDIS_FULL_SECONDS)  # the full Redis itself: part of the scenario
            client.config_set("maxmemory", 0)
            self.note("redis memory freed")
        finally:
            client.close()

    def faults(self) -> list[tuple[float, Callable[[], None]]]:
        """Each fault with the share of the stream published before it strikes."""
        # A gevent worker has no pool children: its tasks are greenlets of the one process, so
        # its own faults are a SIGTERM (requeue) and a SIGKILL (the visibility timeout).
        one_worker = self.kill_pool_child if self.pool == PREFORK else self.stop_worker
        return [
            (0.10, self.kill_bridge),
            (0.20, one_worker),
            (0.30, self.kill_bridge),
            (0.35, self.replica_leaves),
            (0.40, self.kill_worker),
            (0.45, self.poison),
            (0.50, self.restart_redis),
            (0.55, self.fill_redis),
            (0.60, self.kill_bridge),
            (0.70, self.restart_mosquitto),
            (0.75, self.kill_mosquitto),
            (0.80, one_worker),
            (0.85, self.kill_worker),
            (0.90, self.kill_bridge),
        ]


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


class SequencedPublisher:
    """Publishes check-ins with QoS 1 through broker restarts, at least once each."""

    def __init__(self, port: int, topic: str, messages: int) -> None:
        # A persistent session, so messages in flight across a broker restart are resent.
        settings = MqttSettings(port=port, keepalive=10, reconnect_max_delay=2)
        self.client = new_client(settings, f"chaos-{os.getpid()}-publisher", persistent=True)
        self.client.max_inflight_messages_set(1000)
        self.client.connect(**connect_arguments(settings, persistent=True))
        self.client.loop_start()
        self.feed = list(checkin_tweets(messages, id_base=ID_BASE, topic=topic, seed=7))
        self.infos: list[mqtt.MQTTMessageInfo | None] = [None] * messages
        self.steady = max(0, messages - BROKER_BACKLOG)
        """The feed's first part goes out at the steady rate; the rest is the broker fault's."""
        self.running = threading.Event()
        self.running.set()
        self.parked = threading.Event()
        """Set while the feed waits for `running`: nothing of it is in the middle of a publish."""
        self.sent = 0

    def publish(self, rate: float, on_progress: Callable[[float], None]) -> None:
        started = time.monotonic()
        for index in range(self.steady):
            if not self.running.is_set():
                self.parked.set()
                self.running.wait()
                self.parked.clear()
            delay = started + index / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self._publish(index)
            self.sent = index + 1
            on_progress((index + 1) / self.steady)

    def hold(self, timeout: float) -> None:
        """Pause the feed, then wait until the broker acked everything published so far."""
        self.running.clear()
        wait_for(
            lambda: self.parked.is_set() or self.sent >= self.steady,
            timeout,
            "the feed to pause",
        )
        wait_for(
            lambda: all(_acked(self.infos[i]) for i in range(self.sent)),
            timeout,
            "the broker to ack the feed so far",
        )

    def resume(self) -> None:
        self.running.set()

    def publish_held_back(self) -> range:
        """Publish at once the messages kept back from the steady feed; their sequence numbers."""
        held_back = range(self.steady, len(self.feed))
        for index in held_back:
            self._publish(index)
        return held_back

    def _publish(self, index: int) -> None:
        message = self.feed[index]
        self.infos[index] = self.client.publish(message.topic, message.payload, qos=1)

    def acked_sequence(self) -> set[int]:
        """The sequence numbers whose PUBACK has arrived."""
        return {i for i, info in enumerate(list(self.infos)) if _acked(info)}

    def confirm(self, timeout: float) -> int:
        """Wait for every PUBACK, publishing again whatever the broker never acknowledged."""
        republished = 0
        deadline = time.monotonic() + timeout
        while True:
            missing = [i for i, info in enumerate(self.infos) if not _acked(info)]
            if not missing:
                return republished
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(missing)} messages never acknowledged by the broker")
            time.sleep(1)  # give in-flight PUBACKs a moment before publishing again
            still = [i for i in missing if not _acked(self.infos[i])]
            if len(still) == len(missing) and self.client.is_connected():
                for i in still:
                    message = self.feed[i]
                    self.infos[i] = self.client.publish(message.topic, message.payload, qos=1)
                republished += len(still)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _acked(info: mqtt.MQTTMessageInfo | None) -> bool:
    """Whether the broker acknowledged it; one published while disconnected never counts."""
    return info is not None and info.rc == mqtt.MQTT_ERR_SUCCESS and info.is_published()


def count_effects(client: redis.Redis) -> Counter[int]:
    """How many resolved-stream entries each sequence number has."""
    counts: Counter[int] = Counter()
    start = "-"
    while True:
        entries = client.xrange(RESOLVED_STREAM, min=start, count=5000) or []
        for _, fields in entries:
            if fields:
                counts[int(fields[b"tweet_id"]) - ID_BASE] += 1
        if len(entries) < 5000:
            return counts
        last = entries[-1][0]
        start = "(" + (last.decode() if isinstance(last, bytes) else str(last))


def _worker_lost_letters(client: redis.Redis) -> int:
    letters = client.xrange(redis_keys.deadletters(KEY_PREFIX)) or []
    return sum(1 for _, fields in letters if (fields or {}).get(b"reason") == b"worker_lost")


def traced(client: redis.Redis, sequences: set[int]) -> set[int]:
    """Those of `sequences` that reached the bridge yet took no effect: Redis still holds their
    task in the ledger (queued, running or swept), or a dead letter names them."""
    if not sequences:
        return set()
    ledger = {_text(member) for member in client.zrange(f"{KEY_PREFIX}:ledger", 0, -1)}
    letters = [
        _text(value)
        for _, fields in client.xrange(redis_keys.deadletters(KEY_PREFIX)) or []
        for value in (fields or {}).values()
    ]

    def seen(sequence: int) -> bool:
        tweet_id = str(ID_BASE + sequence)
        task_id = deterministic_task_id(CHECKIN_TASK, tweet_id)
        names = (task_id, f'"{tweet_id}"')
        return task_id in ledger or any(name in letter for letter in letters for name in names)

    return {sequence for sequence in sequences if seen(sequence)}


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def run_chaos(  # noqa: PLR0915  (the chaos run, one step after another)
    workdir: Path,
    messages: int,
    rate: float,
    console: Console | None = None,
    pool: str = GEVENT,
) -> Report:
    console = console or Console(stderr=True)
    chaos = Chaos(workdir, messages, rate, pool)
    started = time.monotonic()
    try:
        chaos.start()
        publisher = SequencedPublisher(
            chaos.mosquitto.port,
            chaos.env["TASKHUB_TOPIC_PREFIX"] + "checkins/{city}/tweets",
            messages,
        )
        chaos.publisher = publisher
        pending = chaos.faults()
        lock = threading.Lock()
        strike: list[Callable[[], None]] = []

        def on_progress(share: float) -> None:
            with lock:
                while pending and share >= pending[0][0]:
                    strike.append(pending.pop(0)[1])

        feeder = threading.Thread(target=publisher.publish, args=(rate, on_progress))
        feeder.start()
        while feeder.is_alive() or strike:
            with lock:
                fault = strike.pop(0) if strike else None
            if fault is not None:
                fault()
            chaos.supervise()
            feeder.join(timeout=0.1)
        chaos.note(f"published {messages}")
        republished = publisher.confirm(timeout=120)
        chaos.note(f"broker acknowledged all (republished {republished})")
        publisher.close()

        client = redis.Redis.from_url(chaos.redis.url)

        queues = ("checkins", "sensors", "poison")
        quiet_since: list[float] = []

        def settled() -> bool:
            """Every check-in has its effect, or else the broker may have lost it and nothing
            is left to run: queues, unacked and ledger empty, unchanged for QUIET_SECONDS."""
            chaos.supervise()
            if not _worker_lost_letters(client):
                return False  # the poison task is still at work
            counts = count_effects(client)
            missing = {seq for seq in range(messages) if counts[seq] == 0}
            if not missing:
                return True
            idle = (
                missing <= chaos.acked_before_broker_kill
                and not any(client.llen(queue) for queue in queues)
                and not client.hlen(redis_keys.KOMBU_UNACKED)
                and not client.zcard(f"{KEY_PREFIX}:ledger")
            )
            if not idle:
                quiet_since.clear()
                return False
            quiet_since[:] = quiet_since or [time.monotonic()]
            return time.monotonic() - quiet_since[0] >= QUIET_SECONDS

        try:
            wait_for(settled, SETTLE_TIMEOUT, "every check-in's effect")
        except TimeoutError:
            chaos.note("timed out waiting for effects")
        chaos.note("effects counted")
        counts = count_effects(client)
        redelivered = sum(int(v) for v in (client.hgetall(DUPLICATES) or {}).values())
        worker_lost = _worker_lost_letters(client)
        missing = {seq for seq in range(messages) if counts[seq] == 0}
        broker_candidates = missing & chaos.acked_before_broker_kill
        by_broker = broker_candidates - traced(client, broker_candidates)
        client.close()
        report = Report(
            messages=messages,
            lost=len(missing - by_broker),
            double_effects=sum(1 for seq in range(messages) if counts[seq] > 1),
            redelivered=redelivered,
            seconds=time.monotonic() - started,
            lost_by_broker=len(by_broker),
            broker_kills=chaos.broker_kills,
            worker_lost_letters=worker_lost,
            events=chaos.events,
        )
        chaos.bridge.terminate(timeout=60)
        report.bridge_lines = [
            line.split("taskhub.bridge: ", 1)[1]
            for line in chaos.bridge.output().splitlines()
            if "bridge stopped:" in line or "spool drained" in line
        ]
        return report
    finally:
        chaos.stop()


def print_report(report: Report, console: Console) -> None:
    table = Table("t (s)", "event", title="chaos run")
    for event in report.events:
        table.add_row(f"{event.at:7.1f}", event.what)
    console.print(table)
    for line in report.bridge_lines:
        console.print(f"bridge: {line}")
    print(report.last_line())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/chaos", description=__doc__)
    parser.add_argument("--messages", type=int, default=DEFAULT_MESSAGES)
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE, help="messages per second")
    parser.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    parser.add_argument(
        "--pool",
        choices=(GEVENT, PREFORK),
        default=GEVENT,
        help="the workers' pool (default: %(default)s, the recommended worker)",
    )
    args = parser.parse_args(argv)
    if args.messages <= BROKER_BACKLOG:
        parser.error(f"--messages must exceed {BROKER_BACKLOG}, the broker fault's backlog")
    workdir = Path(tempfile.mkdtemp(prefix="taskhub-chaos-"))
    console = Console(stderr=True)
    console.print(
        f"chaos: {args.messages} messages at {args.rate:g}/s, {args.pool} workers; "
        f"logs in {workdir}"
    )
    report = run_chaos(workdir, args.messages, args.rate, console, args.pool)
    print_report(report, console)
    if not args.keep and report.ok:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
