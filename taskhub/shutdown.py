"""How a worker stops on SIGTERM (with REMAP_SIGTERM=SIGQUIT): it takes no new task, gives its
running tasks up to TASKHUB_TASKS__SOFT_SHUTDOWN_TIMEOUT to finish, then gives the rest back.

Celery's own soft shutdown sleeps out the whole timeout, whether tasks run or not (with
`worker_enable_soft_shutdown_on_idle`), and keeps taking tasks while it sleeps, only to cut them
short at its end. Every stop took the full 10 s, so honcho's 5 s ran out and it SIGKILLed the
workers. Here the wait ends as soon as no task runs; a task held for its ETA is not running, and
goes back to its queue when the worker closes its channel.

A BRPOP already waiting when the worker stops consuming may still hand it a task (kombu cancels
after that read). Such a task goes straight back to its queue, unrun: started, it would only be
cut short, or bounce between workers that are stopping together, a warning and a traceback each.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery.apps import worker as celery_worker
from celery.worker import state
from kombu.common import ignore_errors
from kombu.message import Message

from taskhub.refusals import RecordingConsumer

log = logging.getLogger("taskhub.worker")

POLL_SECONDS = 0.05
"""How often a stopping worker looks whether its last running task has finished."""

_soft_shutdown_began = False


def stopping() -> bool:
    """True once this process is a worker that began to stop: from the start of its soft
    shutdown, which Celery's own flags (`should_stop`, `should_terminate`) only mark after it."""
    return (
        _soft_shutdown_began or state.should_stop is not None or state.should_terminate is not None
    )


class Worker(celery_worker.Worker):  # type: ignore[misc]
    """`celery -A taskhub worker`: Celery's worker with taskhub's soft shutdown (`app.Worker`)."""

    def wait_for_soft_shutdown(self) -> None:
        """Stop consuming, then wait while tasks run, at most `worker_soft_shutdown_timeout`.

        Celery then cancels what still runs (taskhub's task base class gives each back) and
        closes the channel, which returns every task it holds unacked to its queue. In a gevent
        worker this runs in a greenlet of its own (taskhub/worker.py), so tasks run meanwhile.
        """
        global _soft_shutdown_began
        _soft_shutdown_began = True
        stop_consuming(self.consumer)
        running = len(state.active_requests)
        if not running:
            return
        timeout = float(self.app.conf.worker_soft_shutdown_timeout)
        log.info("stopping: %d tasks running get up to %gs to finish", running, timeout)
        deadline = time.monotonic() + timeout
        while state.active_requests and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
        if state.active_requests:
            log.warning(
                "stopping: %d tasks still running after %gs go back to their queue",
                len(state.active_requests),
                timeout,
            )


def stop_consuming(consumer: Any) -> None:
    """Take no more tasks from the broker: a task taken now would only be cut short."""
    task_consumer = getattr(consumer, "task_consumer", None)
    if task_consumer is not None:
        ignore_errors(consumer, task_consumer.cancel)


class StoppingConsumer(RecordingConsumer):
    """`worker_consumer`: taskhub's consumer, which gives back, unrun, a task that reaches the
    worker after it stopped consuming."""

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Any:
        handle = super().create_task_handler(*args, **kwargs)

        def on_task_received(message: Message) -> Any:
            if stopping():
                log.debug("stopping: task %s given back unrun", message.headers.get("id"))
                message.reject(requeue=True)
                return None
            return handle(message)

        return on_task_received
