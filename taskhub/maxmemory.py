"""Riding out a Redis at maxmemory (noeviction): it refuses writes, and every command inside
MULTI, until memory is freed. A worker waits and tries again rather than dying or losing a task.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from celery.worker import state as worker_state
from redis.exceptions import OutOfMemoryError

log = logging.getLogger("taskhub.maxmemory")

T = TypeVar("T")

FIRST_WAIT_SECONDS = 0.1
"""First pause after Redis refused for lack of memory; doubled after each refusal."""
MAX_WAIT_SECONDS = 2.0
"""Longest pause between tries: memory freed is seen within this."""


def _stopping() -> bool:
    return worker_state.should_stop is not None or worker_state.should_terminate is not None


def wait_while_full(call: Callable[[], T], what: str) -> T:
    """`call()`, tried again for as long as Redis refuses it for lack of memory.

    A stopping worker stops waiting and raises the refusal: what it holds is still unacked in
    Redis (or, for a task taken but not yet recorded, in the bridge's ledger).
    """
    wait = FIRST_WAIT_SECONDS
    since: float | None = None
    while True:
        try:
            result = call()
        except OutOfMemoryError:
            if _stopping():
                raise
            if since is None:
                since = time.monotonic()
                log.warning("redis is at maxmemory: %s waits until memory is freed", what)
            time.sleep(wait)  # gevent's sleep in a gevent worker: other tasks run meanwhile
            wait = min(wait * 2, MAX_WAIT_SECONDS)
            continue
        if since is not None:
            log.warning("redis has memory again: %s after %.1fs", what, time.monotonic() - since)
        return result
