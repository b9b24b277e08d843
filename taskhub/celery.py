"""The Celery application, so that `celery -A taskhub worker` and `celery -A taskhub flower` work.

Its configuration lives in the top-level `celeryconfig` module, derived from taskhub's settings.
Importing this module reads no settings: Celery loads `celeryconfig` when the app is first
configured (a worker's start, a task's first call), and a bad setting ends the process there, in
one line, before Celery starts anything. So a program (or a test run) may import the app and its
tasks first and set its TASKHUB_ variables after.
"""

from __future__ import annotations

import gc
import importlib
import logging
from functools import cached_property
from typing import Any

import billiard.common
from celery import Celery
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    worker_init,
    worker_process_init,
    worker_ready,
)

import taskhub.deferral  # connects the publish stamp and the ETA cap
import taskhub.telemetry.worker  # (connects the worker's metrics, probes and beats)
import taskhub.worker_tracing  # noqa: F401  (traces tasks when tracing is on)
from taskhub import debug_lines
from taskhub.redaction import redact_logs
from taskhub.routes import RouteError, RouteTable, WorkerPool, routes_or_exit
from taskhub.settings import Settings, settings_or_exit
from taskhub.task_log import shorten_task_lines
from taskhub.worker import pool_kind


class App(Celery):  # type: ignore[misc]
    """Celery, with a worker that stops as taskhub/shutdown.py says."""

    @cached_property
    def Worker(self) -> Any:  # noqa: N802  (Celery's name, used by `celery worker`)
        return self.subclass_with_self("taskhub.shutdown:Worker")


app = App("taskhub", task_cls="taskhub.task:Task")
app.config_from_object("celeryconfig")
shorten_task_lines()
debug_lines.install()

log = logging.getLogger("taskhub.worker")


@after_setup_logger.connect
@after_setup_task_logger.connect
def _redact_worker_logs(logger: logging.Logger, **_: object) -> None:
    """Mask secrets in every line Celery's handlers write (the root's and the task logger's, which
    does not propagate): kombu and redis-py errors quote URLs, and tasks log what they like."""
    redact_logs(logger)


@worker_init.connect
def _warn_unless_sigterm_requeues(**_: object) -> None:
    """SIGTERM should requeue in-flight tasks (soft shutdown), which needs REMAP_SIGTERM=SIGQUIT
    in the worker's environment before Celery starts; taskhub cannot set it from inside.
    """
    if billiard.common.REMAP_SIGTERM != "SIGQUIT":
        log.warning(
            "REMAP_SIGTERM is not SIGQUIT: SIGTERM will wait for running tasks instead of "
            "requeueing them after TASKHUB_TASKS__SOFT_SHUTDOWN_TIMEOUT; start the worker with "
            "REMAP_SIGTERM=SIGQUIT (the Procfile and docker-compose.yml do)"
        )


@worker_ready.connect
@worker_process_init.connect
def freeze_startup_objects(**_: object) -> None:
    """Put everything loaded at start (Celery, kombu, the tasks) beyond the collector's reach.

    A worker's full collections walk that whole heap: in the latency benchmark each paused a
    worker for 30-90 ms while tasks queued behind it. Runs in the main process and in each pool
    child (`gc.freeze` is per process).
    """
    gc.collect()
    gc.freeze()


def check_routes(celery_app: Celery, routes: RouteTable) -> None:
    """Raise RouteError unless every route's task is a registered task on a declared queue."""
    declared = {queue.name for queue in celery_app.conf.task_queues or ()}
    for route in routes:
        where = f"route {route.pattern}"
        try:
            importlib.import_module(route.task_module)
        except Exception as error:
            raise RouteError(
                f"{where}: task module {route.task_module} cannot be imported "
                f"({type(error).__name__}: {error})"
            ) from None
        if route.task not in celery_app.tasks:
            raise RouteError(
                f"{where}: {route.task} is not a Celery task; define it in {route.task_module} "
                f"with @app.task(name={route.task!r})"
            )
        if route.queue not in declared:
            raise RouteError(
                f"{where}: queue {route.queue!r} is not declared in celeryconfig.task_queues"
            )
        own_queue = getattr(celery_app.tasks[route.task], "queue", None)
        if own_queue is not None and own_queue != route.queue:
            raise RouteError(
                f"{where}: task {route.task} names queue {own_queue!r} in its decorator, so "
                f"task.delay() would not land on the route's queue {route.queue!r}; drop queue="
            )


def checked_routes(settings: Settings) -> RouteTable:
    """The route table, checked against the Celery app; a wrong one ends the process in one line."""
    routes = routes_or_exit(settings)
    try:
        check_routes(app, routes)
    except RouteError as error:
        raise SystemExit(f"taskhub: bad route table: {error}") from None
    return routes


@worker_init.connect
def _refuse_a_wrong_route_table(sender: Any = None, **_: object) -> None:
    """A worker whose routes name a missing task would fail every message it takes: stop now."""
    routes = checked_routes(settings_or_exit())
    if sender is not None:
        consume_queues_for_pool(sender, routes)


def consume_queues_for_pool(worker: Any, routes: RouteTable) -> None:
    """Keep a worker off the queues whose routes need the other kind of pool.

    A gevent worker never takes a CPU-bound route's tasks: one long computation would stall
    every task in the process. A prefork worker takes prefork queues, or every queue when the
    table has none (it runs I/O-bound tasks correctly, one at a time).
    """
    kind = pool_kind(worker.pool_cls)
    queues = worker.app.amqp.queues
    consumed = set(queues.consume_from or queues)
    other = {q for q in consumed if routes.queue_pools.get(q, kind) is not kind}
    if kind is WorkerPool.PREFORK and other == consumed:
        return
    if other == consumed:
        raise SystemExit(
            f"taskhub: this {kind} worker would consume only {sorted(other)}, whose routes need "
            "a prefork worker; start one with -P prefork -Q " + ",".join(sorted(other))
        )
    for name in sorted(other):
        queues.deselect(name)
        log.warning(
            "not consuming queue %s: its routes need a %s worker (-P %s -Q %s)",
            name,
            routes.queue_pools[name],
            routes.queue_pools[name],
            name,
        )
