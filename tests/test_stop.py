"""Ctrl-C on `scripts/demo` stops every process by itself, within honcho's 5 s and with nothing in
flight: tasks running at the stop finish or go back to their queue, none stays unacked. The log
it leaves has one line per task and no warning that is not documented (README, "Stopping").
"""

from __future__ import annotations

import os
import re
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from honcho.manager import KILL_WAIT

from rig.isolation import free_port
from rig.processes import Process, python_module, start_worker, wait_for
from tests.support.honcho import Honcho, stop_lines
from tests.support.queues import queued_tweet_ids

pytestmark = pytest.mark.e2e

WORKERS = 2
"""`scripts/demo` starts one worker per core; two, as on the 2-core development machine."""
START_TIMEOUT = 120
PROCESSES = {"standin.1", "bridge.1", "flower.1", "feed.1"} | {
    f"worker.{n}" for n in range(1, WORKERS + 1)
}
DOCUMENTED_WARNINGS = (
    # Real while the demo runs as root: README says so rather than hiding it.
    "SecurityWarning: You're running the worker with superuser privileges",
    # A task taken from Redis in the moment the worker stopped consuming, put back.
    "Requeuing undeliverable message for queue",
    # A task given back at the stop: it still ran when the soft shutdown ended.
    "reject requeue=True: the worker stop",
    "go back to their queue",
)
WARNING_LINE = re.compile(r"WARNING|ERROR|CRITICAL|\[[WEC] \d{6}|\w+Warning:|Traceback")
TASK_ID = re.compile(r"resolve_checkin\[([0-9a-f-]{36})\]")


def _demo_env(tmp_path: Path) -> dict[str, str]:
    """The demo's settings, in this run's Redis db and topic prefix, on ports nobody else uses."""
    client_id = f"{os.environ['TASKHUB_MQTT__CLIENT_ID']}-{uuid.uuid4().hex[:8]}"
    # Stand-in ports of its own: the run's ports may be taken by the in-process `standin` fixture
    # an earlier test of this process started, and a stand-in that cannot bind ends the demo.
    port, venue_port = free_port(), free_port()
    return {
        "TASKHUB_STANDIN__PORT": str(port),
        "TASKHUB_STANDIN__VENUE_PORT": str(venue_port),
        "TASKHUB_HTTP__SHORTLINK_BASE_URL": f"http://127.0.0.1:{port}/s",
        "TASKHUB_HTTP__VENUE_API_BASE_URL": f"http://127.0.0.1:{venue_port}/v2",
        "TASKHUB_FLOWER__PASSWORD": secrets.token_urlsafe(12),
        "TASKHUB_FLOWER__PORT": str(free_port()),
        # A session of its own: one left by another test's bridge would hand this one its queue.
        "TASKHUB_MQTT__CLIENT_ID": client_id,
        "TASKHUB_MQTT__SESSION_EXPIRY": "300",
        "TASKHUB_BRIDGE__SPOOL_DIR": str(tmp_path / "spool"),
    }


@pytest.fixture
def honcho_log(log_dir: Path) -> Path:
    return log_dir / "honcho.log"


def _stored_ids(client: redis.Redis) -> set[str]:
    from taskhub.settings import get_settings

    prefix = f"{get_settings().key_prefix}:checkin:"
    return {key.decode().removeprefix(prefix) for key in client.scan_iter(f"{prefix}*")}


def _stop(demo: Honcho) -> float:
    """Ctrl-C; the seconds until honcho exited, which must be within its own SIGKILL deadline."""
    asked = time.monotonic()
    demo.ctrl_c()
    demo.wait(timeout=KILL_WAIT + 30)
    return time.monotonic() - asked


def _landed(output: str) -> int:
    found = re.search(r"bridge stopped: received=\d+ landed=(\d+)", output)
    assert found, "the bridge did not report its stop"
    return int(found.group(1))


def _assert_stopped_cleanly(output: str, took: float, processes: set[str]) -> None:
    assert "SIGKILL" not in output, output[-3000:]
    assert took < KILL_WAIT, f"the stop took {took:.1f}s, honcho kills at {KILL_WAIT}s"
    assert stop_lines(output) == dict.fromkeys(processes, "0"), output[-3000:]


def _assert_nothing_in_flight(client: redis.Redis, output: str) -> None:
    assert client.hlen("unacked") == 0, "a task is still unacked after the stop"
    assert client.zcard("unacked_index") == 0
    # Every task the bridge landed was resolved, or waits in its queue for the next start.
    accounted = _stored_ids(client) | set(queued_tweet_ids(client))
    assert len(accounted) == _landed(output)


def _assert_log_is_followable(output: str) -> None:
    worker_lines = [line for line in output.splitlines() if re.match(r"\S+ worker\.\d", line)]
    per_task = Counter(m.group(1) for line in worker_lines if (m := TASK_ID.search(line)))
    assert per_task, "no task line in the workers' log"
    assert max(per_task.values()) == 1, per_task.most_common(3)
    warnings = [line for line in output.splitlines() if WARNING_LINE.search(line)]
    undocumented = [w for w in warnings if not any(d in w for d in DOCUMENTED_WARNINGS)]
    assert not undocumented, "\n".join(undocumented)


@pytest.fixture
def demo(tmp_path: Path, honcho_log: Path, broker_redis: redis.Redis) -> Iterator[Honcho]:
    running = Honcho(honcho_log, _demo_env(tmp_path), WORKERS).start()
    try:
        yield running
    finally:
        running.kill()


def test_ctrl_c_stops_the_demo_with_every_process_exiting_by_itself(
    demo: Honcho, broker_redis: redis.Redis
) -> None:
    wait_for(lambda: len(_stored_ids(broker_redis)) >= 10, START_TIMEOUT, "resolved check-ins")

    took = _stop(demo)

    output = demo.output()
    _assert_stopped_cleanly(output, took, PROCESSES)
    _assert_nothing_in_flight(broker_redis, output)
    _assert_log_is_followable(output)


SLOW_LATENCY_MS = 4000
"""Each upstream call takes 2-6 s: every task runs past the Procfile's 2 s soft shutdown."""


def _answers(base: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{base}/health", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture
def slow_upstream(log_dir: Path) -> Iterator[dict[str, str]]:
    """A stand-in that outlives the stop, as a real upstream does, answering slowly."""

    port, venue_port = free_port(), free_port()
    argv = python_module("taskhub.cli", "standin", "--port", str(port))
    process = Process(
        "slow-standin",
        [*argv, "--venue-port", str(venue_port)],
        log_dir,
        {"TASKHUB_STANDIN__LATENCY_MS": str(SLOW_LATENCY_MS)},
    ).start()

    try:
        wait_for(lambda: _answers(f"http://127.0.0.1:{port}"), 30, "the slow stand-in")
        yield {
            "TASKHUB_HTTP__SHORTLINK_BASE_URL": f"http://127.0.0.1:{port}/s",
            "TASKHUB_HTTP__VENUE_API_BASE_URL": f"http://127.0.0.1:{venue_port}/v2",
        }
    finally:
        process.kill()


def test_ctrl_c_under_slow_upstreams_gives_the_running_tasks_back_within_honchos_timeout(
    tmp_path: Path, honcho_log: Path, broker_redis: redis.Redis, slow_upstream: dict[str, str]
) -> None:
    env = _demo_env(tmp_path) | slow_upstream
    demo = Honcho(honcho_log, env, WORKERS, ("worker", "bridge", "flower", "feed")).start()
    try:
        wait_for(lambda: broker_redis.hlen("unacked") >= 5, START_TIMEOUT, "tasks running")

        took = _stop(demo)
    finally:
        demo.kill()

    output = demo.output()
    _assert_stopped_cleanly(output, took, PROCESSES - {"standin.1"})
    assert "tasks running get up to 2s to finish" in output
    assert "go back to their queue" in output
    _assert_nothing_in_flight(broker_redis, output)
    _assert_log_is_followable(output)


ETA_STOP_BOUND = 3.0
"""Seconds an idle worker may take to stop; Celery's soft shutdown on idle slept 10 s first."""


def test_a_worker_holding_only_a_task_for_its_eta_stops_at_once_and_gives_it_back(
    log_dir: Path, broker_redis: redis.Redis
) -> None:
    from tasks.checkins import resolve_checkin
    from tests.conftest import checkin_tweet

    worker = start_worker("eta-holder", log_dir, {})
    try:
        resolve_checkin.apply_async((checkin_tweet("95001", "Later01"),), countdown=60)
        wait_for(lambda: broker_redis.hlen("unacked") == 1, 30, "the worker to hold the task")
        assert broker_redis.llen("checkins") == 0
        asked = time.monotonic()
        assert worker.terminate(timeout=30) == 0
        took = time.monotonic() - asked
    finally:
        worker.kill()
    assert broker_redis.hlen("unacked") == 0
    assert queued_tweet_ids(broker_redis) == ["95001"]
    assert took < ETA_STOP_BOUND, f"took {took:.1f}s to stop"


def test_a_standin_told_to_stop_answers_the_requests_in_hand_first(log_dir: Path) -> None:
    import concurrent.futures
    import signal

    import httpx

    port, venue_port = free_port(), free_port()
    argv = python_module("taskhub.cli", "standin", "--port", str(port))
    standin = Process(
        "standin",
        [*argv, "--venue-port", str(venue_port), "--latency-ms", "1000"],
        log_dir,
        {},
    ).start()
    base = f"http://127.0.0.1:{port}"

    def in_flight() -> int:
        try:
            stats = httpx.get(f"{base}/_standin/stats", timeout=1).json()
        except httpx.TransportError:
            return 0
        return int(stats["shortlink"]["in_flight"])

    try:
        wait_for(lambda: _answers(base), 30, "the stand-in")
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            answer = pool.submit(httpx.get, f"{base}/s/Drain01", timeout=10)
            wait_for(lambda: in_flight() == 1, 30, "the request to be in hand")
            standin.popen.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            assert answer.result().status_code == 301
        assert standin.popen.wait(timeout=10) == 0  # type: ignore[union-attr]
    finally:
        standin.kill()
