"""The route table with a `poison` queue for the tasks in tests/support/poison_tasks.py:
TASKHUB_ROUTES points here in the worker-loss tests, so their workers import those tasks.
"""

from __future__ import annotations

from taskhub import routes as project
from taskhub.payloads import Payload
from taskhub.routes import Route
from taskhub.topics import TopicPattern

POISON_QUEUE = "poison"


class Dose(Payload):
    """What a poison task is asked to do; `retries` only for the retrying one."""

    retries: int = 0
    seconds: float = 0.0
    first_run_seconds: float = 0.0


ROUTES = (
    *project.ROUTES,
    Route(
        pattern=TopicPattern("poison/{kind}/kill"),
        task="tests.support.poison_tasks.kill_own_worker",
        queue=POISON_QUEUE,
        payload=Dose,
    ),
    Route(
        pattern=TopicPattern("poison/{kind}/retry"),
        task="tests.support.poison_tasks.retry_then_succeed",
        queue=POISON_QUEUE,
        payload=Dose,
    ),
)
