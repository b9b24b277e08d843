"""What a worker logs of a task that succeeded: one short line, without the task's result.

Celery logs "Task NAME[ID] succeeded in 0.05s: RESULT" with the whole return value; a resolved
check-in's is a venue document, a screenful per task. The result is in the result backend and
the task's effect in Redis; the log keeps the name, the id and the time. Failures, retries and
rejections are logged in full, as Celery writes them.
"""

from __future__ import annotations

import logging

from celery.app import trace

TRACE_LOGGER = "celery.app.trace"
SHORT_SUCCESS = "Task %(name)s[%(id)s] succeeded in %(runtime)ss"


class ShortSuccessLine(logging.Filter):
    """Drops the return value from Celery's success line (the record's format, not its data)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg is trace.LOG_SUCCESS or record.msg == trace.LOG_SUCCESS:
            record.msg = SHORT_SUCCESS
            if isinstance(record.args, dict):
                # Celery passes the same context as `extra={"data": ...}`, for custom handlers.
                short = {key: value for key, value in record.args.items() if key != "return_value"}
                record.args = short
                record.__dict__["data"] = short
        return True


def shorten_success_lines() -> None:
    """Install the filter on Celery's task-trace logger, once (pool children inherit it)."""
    logger = logging.getLogger(TRACE_LOGGER)
    if not any(isinstance(existing, ShortSuccessLine) for existing in logger.filters):
        logger.addFilter(ShortSuccessLine())
