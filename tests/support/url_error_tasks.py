"""A task that fails with an error quoting a Redis URL with its password, as kombu's and redis-py's
errors do: the redaction tests run it in a real worker and read the worker's log."""

from __future__ import annotations

from typing import Any

from taskhub.celery import app

URL_PASSWORD = "s3cretPW-in-a-url"  # noqa: S105  (made up, for the tests to look for)
QUERY_TOKEN = "t0ken-in-a-query"  # noqa: S105
FAILING_URL = f"redis://:{URL_PASSWORD}@10.0.0.1:6379/0?token={QUERY_TOKEN}"


@app.task(name="tests.support.url_error_tasks.fail_quoting_a_url")
def fail_quoting_a_url(payload: dict[str, Any], kind: str = "") -> None:
    raise RuntimeError(f"cannot reach {FAILING_URL}")
