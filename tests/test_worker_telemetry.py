"""A worker's /metrics counts what it ran (prefork children included), its /readyz follows its
consumer's progress (not Celery's timer), and its beat in Redis says what it is doing.
"""

from __future__ import annotations

import glob
import logging
import os
import signal
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from rig.isolation import free_port
from rig.processes import Process, start_worker, wait_for
from rig.servers import RedisServer
from taskhub import redis_keys
from taskhub.settings import get_settings
from taskhub.task_log import ShortSuccessLine
from taskhub.telemetry.beats import worker_beats
from taskhub.telemetry.progress import ConsumerProgress, FinishedRate
from tests.conftest import checkin_tweet, stored_checkins

if TYPE_CHECKING:
    from taskhub.demo.standin import StandinServer

CHECKINS = 30
TIMEOUT = 30
STUCK_WITHIN = 60
"""The issue's bound: a worker that stopped consuming reads not ready within this many seconds."""
TEST_STALL_AFTER = 5
"""Shorter than the default 30 s so the stuck test stays short; the rule is the same."""
POOLS = {"gevent": (), "prefork": ("-P", "prefork", "-c", "2")}
CHECKIN_TASK = "tasks.checkins.resolve_checkin"


def probe(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return int(answer.status), answer.read().decode()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode()


def metric(port: int, sample: str, **labels: str) -> float:
    """The sum of every `sample` in the worker's /metrics whose labels include `labels`."""
    status, text = probe(port, "/metrics")
    assert status == 200, text
    return sum(
        found.value
        for family in text_string_to_metric_families(text)
        for found in family.samples
        if found.name == sample and labels.items() <= found.labels.items()
    )


def enqueue_checkins(count: int, id_base: int, url: str | None = None) -> list[str]:
    """Send `count` check-in tasks, as any program calling `.apply_async()` would."""
    from taskhub.celery import app
    from tasks.checkins import resolve_checkin

    with app.connection_for_write(url) as connection:
        for n in range(count):
            tweet = checkin_tweet(str(id_base + n), f"Tele{id_base + n}")
            resolve_checkin.apply_async((tweet,), connection=connection)
    return [str(id_base + n) for n in range(count)]


@contextmanager
def telemetry_worker(
    name: str, log_dir: Path, pool: tuple[str, ...], **env: str
) -> Iterator[tuple[Process, int]]:
    port = free_port()
    worker = start_worker(
        name, log_dir, {"TASKHUB_TELEMETRY__WORKER_PORT": str(port), **env}, *pool
    )
    try:
        yield worker, port
    finally:
        worker.kill()


def host(url: str) -> str:
    return url.split("//", 1)[1].split("/", 1)[0]


@pytest.mark.e2e
@pytest.mark.parametrize("pool", POOLS)
def test_worker_metrics_count_what_ran_in_every_process(
    pool: str, log_dir: Path, broker_redis: redis.Redis, standin: StandinServer
) -> None:
    standin.reset_stats()
    with telemetry_worker(f"metrics-{pool}", log_dir, POOLS[pool]) as (worker, port):
        wait_for(lambda: probe(port, "/readyz")[0] == 200, TIMEOUT, "the worker to be ready")
        tweet_ids = enqueue_checkins(CHECKINS, id_base=710_000)
        wait_for(
            lambda: stored_checkins(broker_redis, tweet_ids) == CHECKINS,
            TIMEOUT,
            "every check-in stored",
        )
        task = {"name": CHECKIN_TASK, "queue_name": "checkins"}
        wait_for(
            lambda: metric(port, "celery_task_succeeded_total", **task) == CHECKINS,
            TIMEOUT,
            "the successes counted",
        )
        assert metric(port, "celery_task_received_total", **task) == CHECKINS
        assert metric(port, "celery_task_started_total", **task) == CHECKINS
        assert metric(port, "celery_task_runtime_count", **task) == CHECKINS
        assert metric(port, "taskhub_task_queue_wait_seconds_count", **task) == CHECKINS
        assert metric(port, "celery_task_failed_total") == 0

        http = get_settings().http
        answered = standin.stats
        for service, base_url in (
            ("venue", http.venue_api_base_url),
            ("shortlink", http.shortlink_base_url),
        ):
            for status, count in answered[service]["by_status"].items():
                counted = metric(
                    port, "taskhub_upstream_requests_total", host=host(base_url), status=status
                )
                assert counted == count, (service, status)
        assert answered["venue"]["by_status"].get("200", 0) > 0
        assert metric(port, "taskhub_upstream_cache_total", result="miss") >= CHECKINS

        current, low, high = (
            metric(port, "taskhub_worker_pool_size", bound=bound)
            for bound in ("current", "min", "max")
        )
        assert (low, high) == ((2.0, 20.0) if pool == "gevent" else (2.0, 2.0))
        assert low <= current <= high
        assert metric(port, "celery_worker_up") == 1
        assert metric(port, "taskhub_worker_ready") == 1
        assert metric(port, "taskhub_worker_consumer_progress_age_seconds") < TEST_STALL_AFTER

        prefix = get_settings().key_prefix

        def finished_in_beat() -> bool:
            beats = [b for b in worker_beats(broker_redis, prefix) if b.pid == worker.pid]
            return bool(beats) and beats[0].finished_per_second.get("checkins", 0) > 0

        wait_for(finished_in_beat, TIMEOUT, "the worker's beat to show tasks finished")
        (beat,) = [b for b in worker_beats(broker_redis, prefix) if b.pid == worker.pid]
        assert beat.ready
        assert beat.pool == pool
        assert "checkins" in beat.queues
        assert (beat.pool_min, beat.pool_max) == (low, high)

        worker.terminate()
        leftovers = glob.glob(
            os.path.join(tempfile.gettempdir(), f"taskhub-metrics-{worker.pid}-*")
        )
        assert not leftovers, "the prefork worker left its metrics directory behind"
        assert not broker_redis.exists(redis_keys.beat(prefix, "worker", beat.hostname)), (
            "a worker that stopped cleanly is still listed"
        )
    success_lines = [line for line in worker.output().splitlines() if "succeeded in" in line]
    assert len(success_lines) == CHECKINS
    assert all(line.rstrip().endswith("s") for line in success_lines), success_lines[0]
    assert "'venue'" not in worker.output(), "a success line logged the task's whole result"


@pytest.mark.e2e
@pytest.mark.parametrize("pool", POOLS)
def test_worker_whose_consumer_is_stuck_is_not_ready_within_a_minute(
    pool: str, log_dir: Path, private_redis: RedisServer
) -> None:
    """The broker freezes (SIGSTOP: connections stay open, the consumer's BRPOP never returns,
    as a worker stuck after a reconnect): the process lives and its timer fires, yet it takes
    no work. /readyz must say so; /healthz stays 200; once Redis answers again, ready again."""
    env = {
        "TASKHUB_BROKER_URL": private_redis.url,
        "TASKHUB_RESULT_BACKEND": private_redis.url,
        "TASKHUB_TELEMETRY__STALL_AFTER": str(TEST_STALL_AFTER),
    }
    assert private_redis.popen is not None
    redis_pid = private_redis.popen.pid
    with telemetry_worker(f"stuck-{pool}", log_dir, POOLS[pool], **env) as (_, port):
        wait_for(lambda: probe(port, "/readyz")[0] == 200, TIMEOUT, "the worker to be ready")
        os.kill(redis_pid, signal.SIGSTOP)
        try:
            wait_for(lambda: probe(port, "/readyz")[0] == 503, STUCK_WITHIN, "/readyz to fail")
            status, why = probe(port, "/readyz")
            assert status == 503
            assert "stuck" in why, why
            assert probe(port, "/healthz")[0] == 200
            assert metric(port, "taskhub_worker_ready") == 0
            assert metric(port, "taskhub_worker_consumer_progress_age_seconds") > TEST_STALL_AFTER
        finally:
            os.kill(redis_pid, signal.SIGCONT)
        wait_for(lambda: probe(port, "/readyz")[0] == 200, TIMEOUT, "/readyz to recover")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_progress_is_a_poll_answered_or_a_task_finished_within_stall_after() -> None:
    clock = FakeClock()
    progress = ConsumerProgress(clock)
    clock.now += 29
    assert progress.verdict(30, running=0).ok
    clock.now += 2
    stuck = progress.verdict(30, running=0)
    assert not stuck.ok
    assert "stuck" in stuck.why
    progress.polled()
    assert progress.verdict(30, running=0).ok
    clock.now += 31
    full = progress.verdict(30, running=4)
    assert not full.ok, "a pool full of tasks running past stall_after takes no work"
    assert "4 tasks run" in full.why
    progress.task_finished("checkins")
    assert progress.verdict(30, running=3).ok
    assert progress.finished == {"checkins": 1}


def test_finished_rate_is_taken_over_the_last_ten_seconds() -> None:
    rate = FinishedRate(window=10)
    assert rate.update(0, {"checkins": 0}) == {"checkins": 0.0}
    for second in range(2, 21, 2):
        found = rate.update(second, {"checkins": 5 * second if second <= 10 else 50})
    assert found == {"checkins": 0.0}, "nothing finished in the last 10 s"
    assert rate.update(22, {"checkins": 70})["checkins"] == pytest.approx(2.0)


def test_success_line_drops_the_result_and_a_failure_keeps_it() -> None:
    from celery.app import trace

    context = {"id": "t1", "name": "tasks.x", "runtime": 0.05, "return_value": "{'venue': 1}"}
    success = logging.LogRecord(
        "celery.app.trace", logging.INFO, "", 0, trace.LOG_SUCCESS, (context,), None
    )
    assert ShortSuccessLine().filter(success)
    assert success.getMessage() == "Task tasks.x[t1] succeeded in 0.050s"
    failure_context = {**context, "exc": "Boom('venue')", "description": "raised unexpected"}
    failure = logging.LogRecord(
        "celery.app.trace", logging.ERROR, "", 0, trace.LOG_FAILURE, (failure_context,), None
    )
    assert ShortSuccessLine().filter(failure)
    assert "Boom('venue')" in failure.getMessage()
