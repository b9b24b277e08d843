"""Tasks for the worker-reply tests (tests/test_worker_replies.py): one that commits once after a
retry, one that fails for good, and one that returns without committing through run_once."""

from __future__ import annotations

from typing import Any

from celery import Task
from redis.client import Pipeline

from taskhub.celery import app
from taskhub.settings import get_settings
from tasks.idempotency import Writes, run_once


def effects_key() -> str:
    """A list with one entry per committed effect of `commit_after_a_retry`."""
    return f"{get_settings().key_prefix}:test:reply-effects"


@app.task(bind=True, name="tests.support.reply_tasks.commit_after_a_retry", max_retries=3)
def commit_after_a_retry(self: Task, item: dict[str, Any]) -> dict[str, Any]:
    """Retry once (a retry must not reply), then commit `item` once under its id."""
    if self.request.retries < 1:
        raise self.retry(countdown=0)

    def compute() -> tuple[dict[str, Any], Writes]:
        result = {"id": item["id"], "task_id": self.request.id, "retries": self.request.retries}

        def writes(pipe: Pipeline) -> None:
            pipe.rpush(effects_key(), str(self.request.id))

        return result, writes

    return run_once(self.name, str(self.request.id), f"replytest:{item['id']}", compute)


@app.task(name="tests.support.reply_tasks.fail_for_good")
def fail_for_good(item: dict[str, Any]) -> None:
    raise ValueError(f"cannot handle {item['id']}")


@app.task(name="tests.support.reply_tasks.echo")
def echo(item: dict[str, Any]) -> dict[str, Any]:
    """Returns without run_once: it replies from the task_success fallback."""
    return {"echo": item}
