"""A wrong route table or setting stops every entry point at start: one line says what to fix."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from rig.processes import celery, python_module

# every test starts a taskhub process (bridge, worker, CLI) and reads its first line
pytestmark = pytest.mark.e2e

BAD = "tests.support.bad_routes"


def _start(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=60, env={**os.environ, **env}
    )


@pytest.mark.parametrize(
    ("routes", "complaint"),
    [
        (f"{BAD}:SAME_PATTERN_TWICE", "subscribe to the same filter; remove one"),
        (f"{BAD}:UNKNOWN_TASK", "tasks.sensors.record_readings is not a Celery task"),
        (f"{BAD}:MISSING_MODULE", "task module tasks.alarms cannot be imported"),
        (f"{BAD}:NOT_ROUTES", "must be a list or tuple of taskhub.routes.Route"),
        (f"{BAD}:NOWHERE", "has no attribute 'NOWHERE'"),
        ("tests.support.malformed_routes:ROUTES", "'#' must be the last level"),
    ],
)
def test_the_bridge_refuses_a_wrong_route_table_in_one_line(routes: str, complaint: str) -> None:
    done = _start(python_module("bridge"), {"TASKHUB_ROUTES": routes})
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("taskhub: bad route table: ")
    assert complaint in lines[0]


@pytest.mark.parametrize(
    "argv",
    [
        python_module("taskhub.cli", "routes"),
        celery("worker", "--pool=solo", "--without-mingle", "--without-gossip"),
    ],
    ids=["cli", "worker"],
)
def test_the_worker_and_the_cli_refuse_it_too(argv: list[str]) -> None:
    done = _start(argv, {"TASKHUB_ROUTES": f"{BAD}:UNKNOWN_TASK"})
    assert done.returncode != 0
    assert "taskhub: bad route table:" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("variable", "value", "complaint"),
    [
        ("TASKHUB_BRIDGE__BATCH_SIZE", "0", "TASKHUB_BRIDGE__BATCH_SIZE: Input should be greater"),
        ("TASKHUB_TASKS__VISIBILITY_TIMEOUT", "60", "must exceed time_limit + retry_backoff_max"),
        ("TASKHUB_ROUTES", "no colon", "TASKHUB_ROUTES: String should match pattern"),
        ("TASKHUB_MQTT__QOS", "2", "qos must be 0 or 1 (got 2): the bridge acks a message only"),
        ("TASKHUB_BRIDGE__DEADLETTER_TOPIC", "dead/#", "TASKHUB_BRIDGE__DEADLETTER_TOPIC"),
        (
            "TASKHUB_BRIDGE__DEADLETTER_TOPIC",
            "{topic_prefix}sensors/dead",
            "lies inside the bridge's subscription",
        ),
    ],
)
def test_an_impossible_setting_is_refused_in_one_line(
    variable: str, value: str, complaint: str
) -> None:
    value = value.format(topic_prefix=os.environ.get("TASKHUB_TOPIC_PREFIX", ""))
    done = _start(python_module("bridge"), {variable: value})
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("taskhub: bad configuration:")
    assert complaint in lines[0]


def test_a_spool_dir_that_is_a_file_is_refused_in_one_line(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    done = _start(python_module("bridge"), {"TASKHUB_BRIDGE__SPOOL_DIR": str(not_a_directory)})
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("taskhub: bad configuration: the spool ")
    assert "set TASKHUB_BRIDGE__SPOOL_DIR to a writable directory" in lines[0]


def test_a_damaged_spool_file_is_refused_in_one_line_and_left_in_place(tmp_path: Path) -> None:
    client_id = "damaged-spool"
    spool = tmp_path / f"{client_id}.sqlite3"
    spool.write_bytes(b"this was a spool once" * 100)
    done = _start(
        python_module("bridge"),
        {"TASKHUB_BRIDGE__SPOOL_DIR": str(tmp_path), "TASKHUB_MQTT__CLIENT_ID": client_id},
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "file is not a database" in lines[0]
    assert "move a damaged spool file aside" in lines[0]
    assert spool.read_bytes() == b"this was a spool once" * 100


URL_PASSWORD = "s3cretPW"  # noqa: S105  (made up, for the tests to look for)


@pytest.mark.parametrize(
    ("variable", "value", "complaint"),
    [
        ("TASKHUB_BROKER_URL", "http://:s3cretPW@redis.internal:6379/0", "not http scheme"),
        ("TASKHUB_BROKER_URL", "redis+sentinel://:s3cretPW@sentinel:26379/0", "redis+sentinel"),
        ("TASKHUB_RESULT_BACKEND", "htp://:s3cretPW@redis.internal:6379/1", "not htp scheme"),
        ("TASKHUB_STORE_URL", "rediss//:s3c@retPW@redis.internal:6380/0", "not no scheme"),
        ("TASKHUB_HTTP__SHORTLINK_BASE_URL", "ftp://u:s3c@retPW@short.example/s", "(got 'ftp://u:***@short.example/s')"),
        ("TASKHUB_HTTP__VENUE_API_BASE_URL", "ftp://venue.example/v2?api_key=s3cretPW", "(got 'ftp://venue.example/v2?api_key=***')"),
    ],
)  # fmt: skip
def test_a_refused_url_never_shows_its_password(variable: str, value: str, complaint: str) -> None:
    done = _start(python_module("bridge"), {variable: value})
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"taskhub: bad configuration: {variable}: ")
    assert complaint in lines[0]
    assert "s3c" not in done.stderr + done.stdout


def test_taskhub_config_refuses_a_url_without_showing_its_password() -> None:
    done = _start(
        python_module("taskhub.cli", "config"),
        {"TASKHUB_BROKER_URL": "http://:s3cretPW@redis.internal:6379/0"},
    )
    assert done.returncode == 1
    assert done.stderr.startswith("taskhub: bad configuration: TASKHUB_BROKER_URL: must be")
    assert URL_PASSWORD not in done.stderr + done.stdout
