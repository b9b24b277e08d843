"""Celery's configuration for taskhub, derived from taskhub's settings and route table.

The choices here carry taskhub's delivery promise: JSON only, late acks, tasks of a lost worker
given back, one task prefetched at a time, every route's queue declared.
"""

from __future__ import annotations

from kombu.entity import Exchange, Queue

from taskhub.routes import routes_or_exit
from taskhub.settings import settings_or_exit

UNACKED_MUTEX_EXPIRE = 30
"""Seconds a sweep's lock outlives a worker killed while sweeping (kombu's default is 300)."""

_settings = settings_or_exit()
_routes = routes_or_exit(_settings)

broker_url = _settings.broker_url.get_secret_value()
broker_transport = "taskhub.transport:Transport"  # kombu's Redis transport, one client a channel
result_backend = _settings.result_backend.get_secret_value()
broker_connection_retry_on_startup = True
broker_transport_options = {
    # Longer than a task may wait for its retry plus run (checked in settings), or Redis hands a
    # live task to a second worker. A killed worker's tasks come back after it, found by a sweep
    # every unacked_restore_interval seconds; see docs/delivery.md for the whole bound.
    "visibility_timeout": _settings.tasks.visibility_timeout,
    "unacked_restore_interval": _settings.tasks.unacked_restore_interval,
    "unacked_restore_throttle": 1,
    "unacked_mutex_expire": UNACKED_MUTEX_EXPIRE,
}
# A Redis at maxmemory refuses a STARTED or result write; retry it as a lost connection is, for
# as long as the task itself may run: a STARTED write that gave up after 5 s failed the task
# unrun, and Celery acked it (scripts/chaos, 5 s at maxmemory: 1-2 check-ins dead-lettered).
result_backend_transport_options = {
    "retry_policy": {"timeout": float(_settings.tasks.time_limit)},
    "additional_connection_errors": ("redis.exceptions.OutOfMemoryError",),
}
# One result backend per process. Celery keeps one per thread otherwise, and in a gevent worker
# every task is a new "thread": each built a backend and opened a Redis connection (py-spy: a
# third of a gevent worker's time). redis-py's client is safe to share.
result_backend_thread_safe = True

# JSON only, on the wire and in results: a pickled message is never loaded.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]
event_serializer = "json"

# At-least-once: ack after the task ran, give back the tasks of a worker that died, and take one
# task at a time so a crash strands at most one.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
# Not True: on a lost Redis connection Celery would terminate running tasks, mark them revoked
# and ack them once Redis is back, so they never run again (found by scripts/chaos).
worker_cancel_long_running_tasks_on_connection_loss = False
# SIGTERM (with REMAP_SIGTERM=SIGQUIT) stops taking tasks, gives running ones up to this long,
# then requeues the rest (taskhub/shutdown.py). An idle worker does not wait: tasks held for their
# ETA go back to their queue when the worker closes its channel (tests/test_stop.py).
worker_soft_shutdown_timeout = _settings.tasks.soft_shutdown_timeout
worker_enable_soft_shutdown_on_idle = False

task_soft_time_limit = _settings.tasks.soft_time_limit
task_time_limit = _settings.tasks.time_limit
result_expires = _settings.tasks.result_expires
task_track_started = True
# Task events cost a worker an eighth of its time (py-spy), so they are off until someone watches:
# Flower turns them on in every worker when it starts (and `celery control enable_events` does).
worker_send_task_events = False

# Every route's queue is declared, so workers consume it and Flower lists it; a task sent to an
# undeclared queue is an error, not a silently created queue nobody reads.
task_queues = tuple(Queue(name, Exchange(name), routing_key=name) for name in _routes.queues)
task_default_queue = _routes.queues[0]
task_create_missing_queues = False
task_routes = {task: {"queue": queue} for task, queue in _routes.task_queues.items()}
imports = (*_routes.task_modules, "tasks.failures")

# Sizes the pool from the queues' backlog, prefetch equal to the pool (taskhub/autoscale.py).
worker_autoscaler = "taskhub.autoscale:BacklogAutoscaler"

# Messages Celery refuses (pickle, unknown task, malformed) are dead-lettered, not only logged
# (taskhub/refusals.py); a task reaching a stopping worker goes back unrun (taskhub/shutdown.py).
worker_consumer = "taskhub.shutdown:StoppingConsumer"
