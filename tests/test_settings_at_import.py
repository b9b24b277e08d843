"""Importing taskhub reads no settings, so what a process sets before its first use is what it
gets, whatever it imported first; a bad setting still stops a worker at start, in one line. What a
route table imports loads no Celery either."""

from __future__ import annotations

import os
import subprocess
import sys

from rig.processes import celery

IMPORTS = (
    "import taskhub.celery, taskhub.deadletter_commands, taskhub.deadletter_replay, "
    "tasks.checkins, tasks.sensors, tasks.failures, bridge.loop"
)


def _run(argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=60, env={**os.environ, **env}
    )


def test_importing_the_celery_app_and_its_tasks_reads_no_settings() -> None:
    done = _run(
        [
            sys.executable,
            "-c",
            f"{IMPORTS}; from taskhub.settings import get_settings; "
            "print(get_settings.cache_info().currsize)",
        ],
        # Read now, this would end the process.
        TASKHUB_TASKS__MAX_RETRIES="nonsense",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "0", "settings were read while importing"


def test_what_a_route_table_imports_loads_no_celery() -> None:
    done = _run(
        [
            sys.executable,
            "-c",
            "import sys, taskhub, taskhub.routes, taskhub.topics, taskhub.settings; "
            "print(sorted(name for name in sys.modules if name.partition('.')[0] == 'celery'))",
        ],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]", "importing taskhub loaded Celery"


def test_the_tasks_retry_policy_comes_from_the_settings_of_first_use() -> None:
    done = _run(
        [
            sys.executable,
            "-c",
            "from tasks.checkins import resolve_checkin; import os; "
            "os.environ['TASKHUB_TASKS__MAX_RETRIES'] = '7'; "
            "os.environ['TASKHUB_TASKS__RETRY_BACKOFF_MAX'] = '42'; "
            "print(resolve_checkin.max_retries, resolve_checkin.retry_backoff_max)",
        ],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["7", "42"]


def test_a_worker_with_a_bad_setting_stops_at_start_in_one_line() -> None:
    argv = celery("worker", "--pool=solo", "--without-mingle", "--without-gossip")
    done = _run(argv, TASKHUB_BRIDGE__BATCH_SIZE="0")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("taskhub: bad configuration: TASKHUB_BRIDGE__BATCH_SIZE")
