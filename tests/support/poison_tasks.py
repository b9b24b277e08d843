"""Tasks for the worker-loss tests: one that kills the process running it, as a segfault or the
OOM killer would, and one that retries. Each records its runs in Redis before anything else.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import redis
from celery import Task

from taskhub.celery import app
from taskhub.settings import get_settings


def runs_key(task_id: str) -> str:
    return f"{get_settings().key_prefix}:test:runs:{task_id}"


def _record_run(task: Task) -> int:
    """Record this run; which run of the task it is (1 for the first)."""
    client = redis.Redis.from_url(get_settings().broker_url.get_secret_value())
    runs = int(client.rpush(runs_key(str(task.request.id)), os.getpid()))
    client.close()
    return runs


@app.task(bind=True, name="tests.support.poison_tasks.kill_own_worker")
def kill_own_worker(self: Task, dose: dict[str, Any], kind: str = "") -> None:
    """SIGKILL the process this runs in: a prefork pool child, or a whole gevent worker."""
    _record_run(self)
    os.kill(os.getpid(), signal.SIGKILL)


@app.task(bind=True, name="tests.support.poison_tasks.retry_then_succeed", max_retries=None)
def retry_then_succeed(self: Task, dose: dict[str, Any], kind: str = "") -> int:
    """Retry at once until `dose["retries"]` retries are spent, then succeed."""
    _record_run(self)
    if self.request.retries < int(dose["retries"]):
        raise self.retry(countdown=0)
    return int(self.request.retries)


@app.task(bind=True, name="tests.support.poison_tasks.sleep_then_succeed")
def sleep_then_succeed(self: Task, dose: dict[str, Any], kind: str = "") -> str:
    """An innocent task: its first run takes `dose["first_run_seconds"]`, long enough to be caught
    beside a poison; any later run takes `dose["seconds"]`."""
    runs = _record_run(self)
    time.sleep(float(dose["first_run_seconds"] if runs == 1 else dose["seconds"]))
    return "done"
