"""Loaded into the benchmark's workers (`--include bench.probe`), stock and taskhub alike: notes
each task's wait from queued to started, and samples the pool's size twice a second."""

from __future__ import annotations

import threading
import time
from typing import Any

import redis
from celery.signals import task_prerun, worker_ready

from taskhub.deferral import SENT_AT_HEADER
from taskhub.settings import get_settings

WAITS_KEY = "bench:waits"
POOL_KEY = "bench:pool"
SAMPLE_SECONDS = 0.5

_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(get_settings().broker_url.get_secret_value())
    return _client


@task_prerun.connect
def _note_wait(task: Any = None, **_: object) -> None:
    sent = getattr(task.request, SENT_AT_HEADER, None) if task is not None else None
    if sent is not None:
        _redis().rpush(WAITS_KEY, time.time() - float(sent))


@worker_ready.connect
def _sample_pool(sender: Any = None, **_: object) -> None:
    worker = getattr(sender, "controller", None)
    if worker is None:
        return
    name = str(worker.hostname)

    def sample() -> None:
        client = redis.Redis.from_url(get_settings().broker_url.get_secret_value())
        while True:
            client.rpush(POOL_KEY, f"{time.time():.2f} {name} {worker.pool.num_processes}")
            time.sleep(SAMPLE_SECONDS)

    threading.Thread(target=sample, daemon=True, name="bench-pool-sampler").start()
