"""The route table with a `url_errors` queue for tests/support/url_error_tasks.py: TASKHUB_ROUTES
points here in the redaction tests, so their worker imports that task."""

from __future__ import annotations

from taskhub import routes as project
from taskhub.payloads import Payload
from taskhub.routes import Route
from taskhub.topics import TopicPattern

URL_ERRORS_QUEUE = "url_errors"

ROUTES = (
    *project.ROUTES,
    Route(
        pattern=TopicPattern("url-errors/{kind}"),
        task="tests.support.url_error_tasks.fail_quoting_a_url",
        queue=URL_ERRORS_QUEUE,
        payload=Payload,
    ),
)
