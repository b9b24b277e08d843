"""The base of every taskhub task: its payload checked at call time and in the worker, a soft time
limit that holds in a gevent worker, a task killed by a stopping gevent worker given back,
deferral, and a cap on the workers one task may kill.

Celery enforces `soft_time_limit` with a signal in prefork children only; in a gevent pool it is
silently ignored. Here a gevent.Timeout raises the same SoftTimeLimitExceeded in the task's own
greenlet, at its next wait for I/O, which is where I/O-bound tasks spend their time.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any

import celery
from celery.exceptions import Reject, SoftTimeLimitExceeded
from celery.worker import state as worker_state

from taskhub.deferral import Deferred, defer, not_before
from taskhub.payloads import InvalidPayload, Payload
from taskhub.task_payload import check_payload, payload_argument
from taskhub.worker import is_green
from taskhub.worker_losses import counted_run

EARLY_WAKE_TOLERANCE = 0.5
"""A task woken this many seconds before it is due runs anyway (timers are not exact)."""


class Task(celery.Task):  # type: ignore[misc]
    """Refuses a payload its `payload_model` does not accept, in words (taskhub/task_payload.py),
    runs the task under its own soft time limit in gevent workers, puts it off again when it
    woke up before its time, turns `Deferred` into a deferral that spends no retry, and
    dead-letters a task whose runs keep killing their worker (taskhub/worker_losses.py)."""

    payload_model: type[Payload] | None = None
    """The model the task's first argument must satisfy; set it in the decorator."""
    # The caller's mistake, not the worker's: Celery logs it in one line, without a traceback.
    throws = (InvalidPayload,)

    @functools.cached_property
    def _payload_argument(self) -> str | None:
        return payload_argument(self)

    def apply_async(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        *more: Any,
        **options: Any,
    ) -> Any:
        """Refuse a bad payload here, in the caller, before anything is sent. The bridge builds
        its messages itself (taskhub/task_messages.py) and never comes through here."""
        check_payload(self, self._payload_argument, args, kwargs)
        return super().apply_async(args, kwargs, *more, **options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # Outside any retry: a payload that is wrong now is wrong on every run.
        check_payload(self, self._payload_argument, args, kwargs)
        if self.request.called_directly:
            return self.run(*args, **kwargs)
        due = not_before(self)
        if due is not None and due - time.time() > EARLY_WAKE_TOLERANCE:
            defer(self, due - time.time(), "not due yet")
        if is_green() and (
            worker_state.should_stop is not None or worker_state.should_terminate is not None
        ):
            # Taken in the last moments of a shutdown (a task given back is received again
            # before the consumer stops): give it back before it starts.
            raise Reject("the worker is stopping", requeue=True)
        with counted_run(self, args, kwargs):
            try:
                if is_green():
                    return self._run_with_green_deadline(args, kwargs)
                return self.run(*args, **kwargs)
            except Deferred as deferred:
                defer(self, deferred.seconds, deferred.reason)

    def soft_limit(self) -> float | None:
        """This run's soft time limit: the message's, the task's, or the configured one."""
        limits = self.request.timelimit or (None, None)
        soft = limits[1] if len(limits) > 1 else None
        soft = soft or self.soft_time_limit or self.app.conf.task_soft_time_limit
        return float(soft) if soft else None

    def deadline(self) -> float:
        """When this run must be done (`time.monotonic()`), by its soft limit; never without one.
        Task code cuts its waits (HTTP timeouts, a rate limit's line) to it."""
        limit = self.soft_limit()
        return time.monotonic() + limit if limit else math.inf

    def _run_with_green_deadline(self, args: Any, kwargs: Any) -> Any:
        import gevent

        limit = self.soft_limit()
        try:
            if not limit:
                return self.run(*args, **kwargs)
            expired = SoftTimeLimitExceeded(f"soft time limit ({limit}s) exceeded")
            with gevent.Timeout(limit, expired):
                return self.run(*args, **kwargs)
        except gevent.GreenletExit:
            # The worker is stopping (cold shutdown) and killed this task's greenlet. Celery's
            # gevent pool would report the killed task a success and ack it: lost. Give it back.
            raise Reject("the worker stopped mid-task", requeue=True) from None
