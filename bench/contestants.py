"""The contestants that drain an MQTT session into Redis, each a process of its own: a raw
subscriber (the ceiling), a naive bridge (paho's `on_message` calling Celery's `send_task`), and
taskhub's bridge as it is run.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping
from pathlib import Path

from bench.harness import TOPIC_PREFIX, Stage
from bench.raw_subscriber import DONE as RAW_DONE
from rig.processes import Process, python_module
from taskhub.mqtt import connect_arguments, new_client
from taskhub.settings import MqttSettings

READY_TIMEOUT = 60.0


def open_session(found: Stage, client_id: str, filters: list[tuple[str, int]]) -> None:
    """Create (or keep) `client_id`'s persistent session subscribed to `filters`, then leave:
    the broker queues everything published there until the contestant drains it."""
    settings = MqttSettings(port=found.mqtt_port)
    client = new_client(settings, client_id, persistent=True)
    subscribed = threading.Event()
    client.on_connect = lambda client, *_: client.subscribe(filters)
    client.on_subscribe = lambda *_: subscribed.set()
    client.connect(**connect_arguments(settings, persistent=True))
    client.loop_start()
    try:
        if not subscribed.wait(timeout=READY_TIMEOUT):
            raise TimeoutError(f"{client_id} was not subscribed within {READY_TIMEOUT:g}s")
    finally:
        client.disconnect()
        client.loop_stop()


def _process(
    found: Stage,
    name: str,
    client_id: str,
    argv: list[str],
    extra: Mapping[str, str] | None = None,
) -> Process:
    env = {**found.env(client_id), "PYTHONUNBUFFERED": "1", **(extra or {})}
    return Process(name, argv, found.workdir, env)


def start_raw(found: Stage, client_id: str, count: int) -> Process:
    """It resumes its session and drains it, then exits."""
    argv = python_module("bench.raw_subscriber", str(count))
    return _process(found, "raw", client_id, argv).start()


def raw_seconds(raw: Process, timeout: float) -> float:
    """Wait for the raw subscriber to finish; the seconds from its first message to its last."""
    assert raw.popen is not None
    raw.popen.wait(timeout=timeout)
    for line in raw.output_of_last_start().splitlines():
        if line.startswith(RAW_DONE):
            return float(line.split()[-2])
    raise RuntimeError(f"the raw subscriber did not finish:\n{raw.output()[-2000:]}")


def start_naive(found: Stage, client_id: str) -> Process:
    """The naive bridge on its persistent session, check-ins to `resolve_checkin(city=)`."""
    argv = python_module(
        "bench.naive_bridge",
        f"{TOPIC_PREFIX}checkins/#",
        "tasks.checkins.resolve_checkin",
        "city",
        "-2",
        "--persistent",
    )
    return _process(found, "naive", client_id, argv).start()


def start_bridge(
    found: Stage,
    client_id: str,
    profile: Path | None,
    env: Mapping[str, str] | None = None,
    name: str = "taskhub",
) -> Process:
    """`python -m bridge` on this stage, with `env` added (tracing on, another code tree); under
    cProfile when `profile` names an output file."""
    argv = [sys.executable]
    if profile is not None:
        argv += ["-m", "cProfile", "-o", str(profile)]
    argv += ["-m", "bridge"]
    return _process(found, name, client_id, argv, env).start()
