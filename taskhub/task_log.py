"""What a worker logs of a task: one short line, without the task's result or a traceback it
raised on purpose.

Celery logs "Task NAME[ID] succeeded in 0.05s: RESULT" with the whole return value; a resolved
check-in's is a venue document, a screenful per task. The result is in the result backend and
the task's effect in Redis; the log keeps the name, the id and the time (in milliseconds).
A task given back to its queue (`Reject(requeue=True)`, as a stopping worker does) logs its one
line without the traceback of the `raise Reject`: the reason says why. Failures, retries and
other rejections are logged in full, as Celery writes them.
"""

from __future__ import annotations

import logging

from celery.app import trace

TRACE_LOGGER = "celery.app.trace"
SHORT_SUCCESS = "Task %(name)s[%(id)s] succeeded in %(runtime).3fs"
REQUEUED = "requeue=True"
"""How a requeueing Reject reads in the line Celery logs of it ("reject requeue=True: ...")."""


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


class RequeueWithoutTraceback(logging.Filter):
    """Drops the traceback from Celery's line for a task given back to its queue."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = record.args if isinstance(record.args, dict) else {}
        if record.msg == trace.LOG_REJECTED and REQUEUED in str(context.get("exc", "")):
            record.exc_info, record.exc_text = None, None
        return True


def shorten_task_lines() -> None:
    """Install the filters on Celery's task-trace logger, once (pool children inherit them)."""
    logger = logging.getLogger(TRACE_LOGGER)
    for kind in (ShortSuccessLine, RequeueWithoutTraceback):
        if not any(isinstance(existing, kind) for existing in logger.filters):
            logger.addFilter(kind())
