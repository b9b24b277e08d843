"""`taskhub status`: what an operator reads, and the exit code a cron job or CI acts on."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
import redis

from rig.processes import wait_for
from taskhub.deadletters import DeadLetter, DeadLetterStream, Reason
from taskhub.settings import get_settings
from taskhub.telemetry.beats import WorkerBeat, record_beat
from tests.conftest import checkin_tweet

pytestmark = pytest.mark.e2e


def status(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taskhub.cli", "status", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )


def enqueue_checkins(count: int) -> None:
    """Check-in tasks sent as any program would (`apply_async`), with no worker to take them."""
    from tasks.checkins import resolve_checkin

    for n in range(count):
        resolve_checkin.apply_async((checkin_tweet(str(880_000 + n), f"Stat{n}"),))


def a_ready_worker_on(client: redis.Redis, queue: str) -> None:
    beat = WorkerBeat(
        hostname=f"status-test@{socket.gethostname()}",
        pid=os.getpid(),
        pool="gevent",
        queues=[queue],
        pool_current=2,
        pool_min=2,
        pool_max=10,
        active=0,
        ready=True,
        progress_age=0.5,
        finished_per_second={queue: 3.0},
        seen_at=time.time(),
    )
    record_beat(client, get_settings().key_prefix, "worker", beat.hostname, beat, 30)


def test_a_backlog_with_no_worker_shows_its_depth_and_age_and_fails_the_max_age_check(
    broker_redis: redis.Redis,
) -> None:
    enqueue_checkins(5)
    first = json.loads(status("--json").stdout)
    checkins = next(q for q in first["queues"] if q["name"] == "checkins")
    assert checkins["depth"] == 5
    assert checkins["consumers"] == 0
    assert {q["name"] for q in first["queues"]} == {"checkins", "sensors"}
    wait_for(
        lambda: json.loads(status("--json").stdout)["queues"][0]["oldest_age_seconds"] > 1.5,
        30,
        "the oldest task to be older than 1.5 s",
    )

    checked = status("--json", "--max-age", "1")
    assert checked.returncode == 1, checked.stdout + checked.stderr
    later = json.loads(checked.stdout)  # the verdict goes to stderr: stdout stays one object
    assert later["queues"][0]["oldest_age_seconds"] > checkins["oldest_age_seconds"]
    assert "queue checkins: oldest task waited" in checked.stderr
    assert status("--max-age", "600").returncode == 0, "younger than the threshold"


def test_an_old_backlog_that_a_ready_worker_consumes_passes_the_check(
    broker_redis: redis.Redis,
) -> None:
    enqueue_checkins(2)
    wait_for(
        lambda: json.loads(status("--json").stdout)["queues"][0]["oldest_age_seconds"] > 1.5,
        30,
        "the oldest task to be older than 1.5 s",
    )
    a_ready_worker_on(broker_redis, "checkins")
    checked = status("--json", "--max-age", "1")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    reading = json.loads(checked.stdout)
    checkins = reading["queues"][0]
    assert checkins["consumers"] == 1
    assert checkins["out_rate"] == 3.0
    assert [w["queues"] for w in reading["workers"]] == [["checkins"]]

    table = status().stdout
    assert "status-test@" in table
    assert "2 (2-10)" in table, table


def test_dead_letters_are_counted_by_reason_for_the_last_hour_and_in_total(
    broker_redis: redis.Redis,
) -> None:
    settings = get_settings()
    stream = DeadLetterStream(broker_redis, settings.key_prefix)
    for reason, count in ((Reason.INVALID_JSON, 3), (Reason.NO_ROUTE, 1)):
        for _ in range(count):
            stream.add(DeadLetter(reason=reason, detail="test", topic="t", payload=b"x"))
    old = DeadLetter(reason=Reason.NO_ROUTE, detail="old", topic="t", payload=b"x")
    with broker_redis.pipeline() as pipe:  # counted two hours ago: in the total only
        from taskhub.deadletters import count_letter

        count_letter(pipe, stream.key, old.reason.value, now=time.time() - 7200)
        pipe.execute()

    letters = json.loads(status("--json").stdout)["deadletters"]
    assert letters["last_hour"] == {"invalid_json": 3, "no_route": 1}
    assert letters["total"] == {"invalid_json": 3, "no_route": 2}
    assert "invalid_json" in status().stdout


def test_watch_reads_again_and_again_with_in_and_out_rates(broker_redis: redis.Redis) -> None:
    with subprocess.Popen(  # closes its stdout on the way out
        [sys.executable, "-m", "taskhub.cli", "status", "--watch", "--json", "--interval", "0.2"],
        stdout=subprocess.PIPE,
        text=True,
    ) as watching:
        try:
            assert watching.stdout is not None
            readings = [json.loads(watching.stdout.readline()) for _ in range(3)]
        finally:
            watching.terminate()
            watching.wait(timeout=10)
    assert [r["taken_at"] for r in readings] == sorted(r["taken_at"] for r in readings)
    assert all(q["in_rate"] is not None for r in readings for q in r["queues"])


def test_an_unreachable_redis_is_one_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "taskhub.cli", "status"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TASKHUB_BROKER_URL": "redis://127.0.0.1:1/0"},
    )
    assert done.returncode != 0
    assert done.stderr.strip().startswith("taskhub: status: Redis unreachable"), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
