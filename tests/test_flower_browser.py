"""What an operator sees in Flower, read from the page a browser renders (headless Chromium):
every route queue with its depth on the Broker page, whichever queues the workers consume, and a
task that failed for good with its exception."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rig.processes import WORKER_READY, Process, celery, wait_for
from tests.conftest import checkin_tweet
from tests.support.browser import details, rendered_dom, table_rows
from tests.support.flower import Flower

pytestmark = pytest.mark.e2e

WORKER_QUEUE = "checkins"
WORKER_NAME = f"flower-{os.getpid()}"
BROKER_COLUMNS = ["Queue", "Messages", "Unacked", "Ready", "Consumers", "Idle since"]


@pytest.fixture
def checkins_worker(log_dir: Path, flower: Flower, standin: object) -> Iterator[Process]:
    """A worker sending events (`-E`) and consuming only the check-ins queue, whose short-link
    service answers 404: each check-in fails at once with CheckinNotResolvable. Started after
    Flower, which sees it come online."""
    shortlinks = os.environ["TASKHUB_HTTP__SHORTLINK_BASE_URL"]
    env = {"TASKHUB_HTTP__SHORTLINK_BASE_URL": f"{shortlinks}/nothing"}
    argv = celery("worker", "-P", "solo", "-E", "-Q", WORKER_QUEUE, "--loglevel=INFO")
    argv += ["--without-mingle", "--without-gossip", "-n", f"{WORKER_NAME}@%h"]
    process = Process("checkins-worker", argv, log_dir, env).start()
    try:
        process.wait_output(WORKER_READY, timeout=60)
        yield process
    finally:
        process.kill()


def route_queue_tasks() -> dict[str, str]:
    """Each route queue and a task routed to it."""
    from taskhub.routes import routes_or_exit
    from taskhub.settings import get_settings

    routes = routes_or_exit(get_settings())
    return {queue: next(r.task for r in routes if r.queue == queue) for queue in routes.queues}


def enqueue(queue: str, task: str, count: int) -> None:
    """`count` tasks on `queue`; their arguments do not matter, no worker here runs them."""
    from taskhub.celery import app

    for _ in range(count):
        app.send_task(task, args=[{}], queue=queue)


def broker_page(flower: Flower) -> dict[str, dict[str, str]]:
    """The Broker page's queue table as rendered: queue name -> column -> text."""
    header, *rows = table_rows(rendered_dom(flower.url_with_credentials("/broker")), "queue-table")
    assert header == BROKER_COLUMNS
    return {row[0]: dict(zip(header, row, strict=True)) for row in rows}


def worker_known(flower: Flower, path: str) -> Any:
    """Our worker's entry in Flower's `/api/workers...` answer, once Flower knows it."""
    workers = flower.get_json(path)
    return next((v for k, v in workers.items() if k.startswith(WORKER_NAME + "@")), None)


def test_broker_page_shows_the_depth_of_every_route_queue(flower: Flower) -> None:
    tasks = route_queue_tasks()
    depths = {queue: 2 + n for n, queue in enumerate(tasks)}  # a different number each
    for queue, task in tasks.items():
        enqueue(queue, task, depths[queue])

    shown = broker_page(flower)

    assert {queue: shown[queue]["Messages"] for queue in tasks} == {
        queue: str(depth) for queue, depth in depths.items()
    }
    assert {queue: shown[queue]["Ready"] for queue in tasks} == {
        queue: str(depth) for queue, depth in depths.items()
    }


def test_broker_page_lists_the_queues_no_running_worker_consumes(
    flower: Flower, checkins_worker: Process
) -> None:
    tasks = route_queue_tasks()
    idle = [queue for queue in tasks if queue != WORKER_QUEUE]
    assert idle, "the route table has one queue only"
    for queue in idle:
        enqueue(queue, tasks[queue], 3)

    def knows_the_workers_queues() -> bool:
        worker = worker_known(flower, "/api/workers?refresh=true")
        return worker is not None and bool(worker.get("active_queues"))

    # Flower lists the queues its workers consume; before this fix, only those.
    wait_for(knows_the_workers_queues, 20, "Flower to see the worker's queues")
    worker = worker_known(flower, "/api/workers")
    assert worker is not None
    assert [queue["name"] for queue in worker["active_queues"]] == [WORKER_QUEUE]

    shown = broker_page(flower)

    assert sorted(shown) == sorted(tasks)
    assert {queue: shown[queue]["Messages"] for queue in idle} == dict.fromkeys(idle, "3")


def test_a_task_that_failed_for_good_shows_its_exception(
    flower: Flower, checkins_worker: Process
) -> None:
    from tasks.checkins import resolve_checkin

    # Events sent before Flower listens are lost: wait until the worker's own reach it.
    wait_for(
        lambda: worker_known(flower, "/api/workers?status=true") is True,
        20,
        "Flower to receive the worker's events",
    )
    result = resolve_checkin.delay(checkin_tweet("4041", "flwr404x"), city="nyc")

    def flower_saw_it_fail() -> bool:
        answer = flower.get(f"/api/task/info/{result.id}")
        return answer.status_code == 200 and answer.json().get("state") == "FAILURE"

    wait_for(flower_saw_it_fail, 30, "Flower to record the task's failure")

    page = details(rendered_dom(flower.url_with_credentials(f"/task/{result.id}")))

    assert page["Status"] == "FAILURE"
    assert page["Exception"] == "CheckinNotResolvable('short link flwr404x answered 404')"
    assert "expand_short_link" in page["Traceback"]
