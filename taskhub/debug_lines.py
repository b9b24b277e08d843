"""Lines Celery and Flower log at INFO or WARNING that tell an operator nothing, logged at DEBUG
instead: they still show with `--loglevel=DEBUG` (worker) or `--logging=debug` (Flower).

- A worker's "Task NAME[ID] received", a second line for every task beside its result's line.
- kombu's "Requeuing undeliverable message for queue ...: No consumers." while the worker stops:
  a task a BRPOP took just as the worker stopped consuming, put back (taskhub/shutdown.py).
- Flower's "Registered tasks:" at start, a dozen lines listing Celery's own tasks.
- Flower's "Inspect method NAME failed" when no worker answered its inspect: four warnings at
  every start before the workers are up. An inspect that fails on the broker ("failed: ERROR")
  stays a warning; a stuck worker shows in its `/readyz` and in `taskhub status`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from celery.app import trace
from kombu.transport.virtual import base as kombu_virtual

from taskhub.shutdown import stopping

Predicate = Callable[[logging.LogRecord], bool]


class AtDebug(logging.Filter):
    """Lowers the records `matches` picks to DEBUG; drops them unless the process logs DEBUG."""

    def __init__(self, matches: Predicate) -> None:
        super().__init__()
        self.matches = matches

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.matches(record):
            return True
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        # A logger's own level passed the record already; the root's says what the process logs.
        return logging.getLogger().isEnabledFor(logging.DEBUG)


def task_received(record: logging.LogRecord) -> bool:
    return bool(record.msg == trace.LOG_RECEIVED)


def given_back_while_stopping(record: logging.LogRecord) -> bool:
    return record.msg == kombu_virtual.W_NO_CONSUMERS and stopping()


def flower_registered_tasks(record: logging.LogRecord) -> bool:
    return str(record.msg).startswith("Registered tasks")


def flower_inspect_unanswered(record: logging.LogRecord) -> bool:
    return record.msg == "Inspect method %s failed"


LINES: dict[str, Predicate] = {
    "celery.worker.strategy": task_received,
    "kombu.transport.virtual.base": given_back_while_stopping,
    "flower.command": flower_registered_tasks,
    "flower.inspector": flower_inspect_unanswered,
}
"""Which lines of which logger go to DEBUG; every Celery process of taskhub's app installs all."""


def install() -> None:
    """Put each logger's filter in place, once."""
    for name, matches in LINES.items():
        logger = logging.getLogger(name)
        if not any(getattr(existing, "matches", None) is matches for existing in logger.filters):
            logger.addFilter(AtDebug(matches))
