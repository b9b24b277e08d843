"""Waiting without a worker slot: a task put off until later, and countdowns that outlast Redis's
visibility timeout.

Redis hands an unacked task to another worker once the visibility timeout passes, and a worker
holds a task with an ETA unacked until then: a countdown longer than the timeout would run twice.
So every published ETA is capped at a hop well inside the timeout, with the real time kept in a
header; a task that wakes before that time is put off again, hop by hop, until it is due.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from celery import Task
from celery.exceptions import Retry
from celery.signals import before_task_publish

from taskhub.settings import get_settings

NOT_BEFORE_HEADER = "taskhub_not_before"
"""Epoch seconds before which the task must not run (kept across hops)."""
SENT_AT_HEADER = "taskhub_sent_at"
"""Epoch seconds the task was first queued: the backlog's age is read from it."""
HOP_SHARE_OF_VISIBILITY = 0.5
"""A hop is at most this share of the visibility timeout, leaving room for the task's run."""
DEFER_JITTER = 0.1
"""Deferred tasks wake spread over this share of their wait, not all in the same instant."""


class Deferred(Exception):
    """Raised by task code: run this task again in `seconds`, without spending one of its retries.

    For waits that are nobody's fault: an upstream's rate limit, its Retry-After, an open breaker.
    """

    def __init__(self, seconds: float, reason: str) -> None:
        super().__init__(f"deferred {seconds:.1f}s: {reason}")
        self.seconds = seconds
        self.reason = reason


def longest_hop() -> float:
    return get_settings().tasks.visibility_timeout * HOP_SHARE_OF_VISIBILITY


def defer(
    task: Task, seconds: float, reason: str, headers: Mapping[str, Any] | None = None
) -> NoReturn:
    """Send the running task again to run in `seconds` with its retry count unchanged (and
    `headers` added), and end this run (the worker acks it, as for a retry; the ledger entry is
    refreshed)."""
    request = task.request
    wait = seconds * (1 + random.uniform(0, DEFER_JITTER))
    headers = {**(request.headers or {}), **(headers or {})}
    headers[NOT_BEFORE_HEADER] = time.time() + wait
    signature = task.signature_from_request(
        request, countdown=wait, retries=request.retries, headers=headers
    )
    signature.apply_async()
    raise Retry(reason, when=wait, sig=signature)


def not_before(task: Task) -> float | None:
    """When this run's task is due, if a deferral or long countdown named a time."""
    headers = task.request.headers or {}
    value = headers.get(NOT_BEFORE_HEADER) or getattr(task.request, NOT_BEFORE_HEADER, None)
    return float(value) if value is not None else None


def sent_at_of(raw_message: bytes | str) -> float | None:
    """When a queued task message (as kombu stores it) was first queued; None if it says not."""
    try:
        value = json.loads(raw_message)["headers"].get(SENT_AT_HEADER)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) else None


@before_task_publish.connect
def stamp_and_cap_eta(headers: dict[str, Any] | None = None, **_: object) -> None:
    """Stamp when a task was first queued, and cap its ETA at one hop.

    Runs in every process that publishes through Celery (`task.delay()`, retries, deferrals);
    the bridge stamps its own messages.
    """
    if headers is None:
        return
    headers.setdefault(SENT_AT_HEADER, time.time())
    eta = headers.get("eta")
    if not eta:
        return
    due = datetime.fromisoformat(eta)
    if due.tzinfo is None:
        due = due.replace(tzinfo=UTC)
    hop_end = datetime.now(UTC) + timedelta(seconds=longest_hop())
    if due > hop_end:
        headers.setdefault(NOT_BEFORE_HEADER, due.timestamp())
        headers["eta"] = hop_end.isoformat()
