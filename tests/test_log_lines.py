"""The log a person follows: a task given back logs one line without a traceback, and the lines
that tell an operator nothing (a task received, Flower's task list, an inspect nobody answered,
a task put back as the worker stops) show only when the process logs at DEBUG.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from celery.app import trace
from kombu.transport.virtual import base as kombu_virtual

from taskhub import debug_lines, shutdown
from taskhub.task_log import RequeueWithoutTraceback

STOPPED = "the worker stopped mid-task"


def _record(
    logger: str, msg: str, args: tuple[object, ...], level: int = logging.INFO
) -> logging.LogRecord:
    """A record as the library makes it (a single dict argument becomes the record's args)."""
    return logging.LogRecord(logger, level, "", 0, msg, args, None)


@pytest.fixture
def root_level() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    level = root.level
    yield root
    root.setLevel(level)


def test_a_task_given_back_logs_its_line_without_the_traceback() -> None:
    try:
        raise ValueError("raised on purpose")
    except ValueError:
        import sys

        exc_info = sys.exc_info()
    given_back = _record(
        "celery.app.trace",
        trace.LOG_REJECTED,
        ({"id": "t1", "name": "tasks.x", "exc": f"reject requeue=True: {STOPPED}"},),
        logging.WARNING,
    )
    given_back.exc_info = exc_info
    dropped = _record(
        "celery.app.trace",
        trace.LOG_REJECTED,
        ({"id": "t2", "name": "tasks.x", "exc": "reject requeue=False: poison"},),
        logging.WARNING,
    )
    dropped.exc_info = exc_info

    assert not _traceback_left(given_back)
    assert given_back.getMessage() == f"Task tasks.x[t1] reject requeue=True: {STOPPED}"
    assert _traceback_left(dropped), "a task rejected for good keeps its traceback"


def _traceback_left(record: logging.LogRecord) -> bool:
    assert RequeueWithoutTraceback().filter(record), "the line itself is always logged"
    return bool(record.exc_info)


@pytest.mark.parametrize(
    ("logger", "msg", "args"),
    [
        ("celery.worker.strategy", trace.LOG_RECEIVED, ({"name": "tasks.x", "id": "t1"},)),
        ("flower.command", "Registered tasks: \n%s", ("['celery.chain', 'tasks.x']",)),
        ("flower.inspector", "Inspect method %s failed", ("stats",)),
    ],
)
def test_lines_that_tell_an_operator_nothing_show_only_at_debug(
    logger: str, msg: str, args: tuple[object, ...], root_level: logging.Logger
) -> None:
    line = debug_lines.AtDebug(debug_lines.LINES[logger])

    root_level.setLevel(logging.INFO)
    assert not line.filter(_record(logger, msg, args))
    root_level.setLevel(logging.DEBUG)
    shown = _record(logger, msg, args)
    assert line.filter(shown)
    assert shown.levelname == "DEBUG"


def test_an_inspect_that_failed_on_the_broker_stays_a_warning(root_level: logging.Logger) -> None:
    root_level.setLevel(logging.INFO)
    line = debug_lines.AtDebug(debug_lines.LINES["flower.inspector"])
    failed = _record("flower.inspector", "Inspect method %s failed: %s", ("stats", "refused"))
    failed.levelno, failed.levelname = logging.WARNING, "WARNING"
    assert line.filter(failed)
    assert failed.levelname == "WARNING"


def test_a_task_put_back_for_want_of_a_consumer_is_a_warning_unless_the_worker_stops(
    root_level: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    root_level.setLevel(logging.INFO)
    logger = "kombu.transport.virtual.base"
    line = debug_lines.AtDebug(debug_lines.LINES[logger])
    assert line.filter(_record(logger, kombu_virtual.W_NO_CONSUMERS, ("checkins",)))
    monkeypatch.setattr(shutdown, "_soft_shutdown_began", True)
    assert not line.filter(_record(logger, kombu_virtual.W_NO_CONSUMERS, ("checkins",)))
