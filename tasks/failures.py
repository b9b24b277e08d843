"""Tasks that failed for good go to the dead-letter stream, with the error, to be fixed and
replayed.

"For good" means Celery gave up: a non-retryable error, or retries exhausted. The task still shows
as FAILURE in the result backend and Flower; the letter is what lets an operator act on it. A task
that answers an MQTT 5 request replies FAILED as well (tasks/replies.py), with the letter's reason
and detail.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

import redis
from celery import Task
from celery.exceptions import Reject
from celery.signals import task_failure

from taskhub.deadletters import DeadLetter, FailedTask, Reason, deadletter_stream
from taskhub.redaction import redact
from taskhub.telemetry.deadletter_log import log_dead_letter
from taskhub.worker_losses import WorkerLostTooOften
from tasks import replies
from tasks.ledger import INFRASTRUCTURE_ERRORS

log = logging.getLogger("taskhub.worker")

TRACEBACK_FRAMES = 8
TRACEBACK_MAX_CHARS = 4000


def short_traceback(exception: BaseException) -> str:
    """The project's own frames plus the innermost one, and the error line: enough to see where
    it went wrong without pages of library internals."""
    frames = traceback.extract_tb(exception.__traceback__)
    innermost = frames[-1:] if frames else []
    kept = [frame for frame in frames[:-1] if "site-packages" not in frame.filename] + innermost
    summary = traceback.StackSummary.from_list(kept[-TRACEBACK_FRAMES:])
    text = "".join(
        [
            "Traceback (most recent call last):\n",
            *summary.format(),
            *traceback.format_exception_only(exception),
        ]
    )
    return text if len(text) <= TRACEBACK_MAX_CHARS else "..." + text[-TRACEBACK_MAX_CHARS:]


def failed_task_letter(
    task: Task, task_id: str, exception: BaseException, args: Any, kwargs: Any
) -> DeadLetter:
    request = task.request
    delivery_info = getattr(request, "delivery_info", None) or {}
    queue = str(delivery_info.get("routing_key") or "")
    kind = type(exception)
    return DeadLetter(
        Reason.TASK_FAILED,
        f"{kind.__name__}: {exception}",
        route=queue or None,
        task=FailedTask(
            name=task.name,
            task_id=task_id,
            queue=queue,
            args=list(args or ()),
            kwargs=dict(kwargs or {}),
            exception=f"{kind.__module__}.{kind.__qualname__}",
            traceback=short_traceback(exception),
            retries=int(getattr(request, "retries", 0) or 0),
        ),
    )


@task_failure.connect
def record_failed_task(
    sender: Task | None = None,
    task_id: str | None = None,
    exception: BaseException | None = None,
    args: Any = None,
    kwargs: Any = None,
    **_: Any,
) -> None:
    """Dead-letter a task that failed for good; one that failed because Redis was away is not
    failed (the ledger sweeper enqueues it again), and one refused for killing its workers has
    its `worker_lost` letter already."""
    if sender is None or task_id is None or exception is None:
        return
    if isinstance(exception, INFRASTRUCTURE_ERRORS) or _lost_too_many_workers(exception):
        return
    letter = failed_task_letter(sender, task_id, exception, args, kwargs)
    try:
        log_dead_letter(letter, deadletter_stream().add(letter))
    except redis.RedisError as error:
        log.error("task %s failed and could not be dead-lettered: %s", task_id, error)
    replies.reply_failed(sender, task_id, letter.reason.value, redact(letter.detail))


def _lost_too_many_workers(exception: BaseException) -> bool:
    return isinstance(exception, Reject) and isinstance(exception.reason, WorkerLostTooOften)
