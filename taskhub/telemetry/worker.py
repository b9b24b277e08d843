"""A worker's telemetry: task metrics counted from Celery's signals in whichever process runs the
task, and, in the main process, the probe server and the beat recorded in Redis.

Connected by importing this module (taskhub/celery.py does). The metric values' storage is chosen
at `worker_init`, before a prefork pool forks (taskhub/telemetry/worker_metrics.py). Readiness
comes from the consumer's own progress (taskhub/telemetry/progress.py).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from celery import states
from celery.signals import (
    task_postrun,
    task_prerun,
    task_received,
    task_rejected,
    task_revoked,
    task_unknown,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)
from celery.worker import state as worker_state
from prometheus_client import generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from taskhub.deferral import SENT_AT_HEADER
from taskhub.settings import Settings, get_settings
from taskhub.telemetry.beats import WorkerBeat, forget_beat, record_beat
from taskhub.telemetry.probes import ProbeServer, Verdict
from taskhub.telemetry.progress import PROGRESS, FinishedRate
from taskhub.telemetry.worker_metrics import (
    process_gone,
    remove_multiprocess_dir,
    served_registry,
    use_multiprocess_values,
    use_single_process_values,
    worker_metrics,
)
from taskhub.worker import broker_redis, pool_forks

log = logging.getLogger("taskhub.telemetry")

STOP_WAIT_SECONDS = 2.0
"""How long a stopping worker waits for its last beat and its leaving the list in Redis."""
STARTED_AT = "_taskhub_started_at"
"""Where a run's start (monotonic) is kept on its request, for its runtime."""

_hostname = ""
"""The worker's node name (`name@host`): set in the main process, inherited by pool children."""
_telemetry: WorkerTelemetry | None = None


def _labels(name: object, delivery_info: Mapping[str, Any] | None) -> tuple[str, str, str]:
    """A task metric's (name, hostname, queue_name)."""
    return str(name or ""), _hostname, str((delivery_info or {}).get("routing_key") or "")


# Task metrics. Per task, in the process that runs it: two signals and a handful of increments.


@task_received.connect
def _count_received(request: Any = None, **_: object) -> None:
    if request is not None:
        labels = _labels(request.name, request.delivery_info)
        worker_metrics().received.labels(*labels).inc()


@task_prerun.connect
def _count_started(task: Any = None, **_: object) -> None:
    request = task.request
    labels = _labels(task.name, request.delivery_info)
    metrics = worker_metrics()
    metrics.started.labels(*labels).inc()
    sent_at = getattr(request, SENT_AT_HEADER, None) or (request.headers or {}).get(SENT_AT_HEADER)
    if isinstance(sent_at, int | float):
        metrics.queue_wait.labels(*labels).observe(max(0.0, time.time() - sent_at))
    setattr(request, STARTED_AT, time.monotonic())


@task_postrun.connect
def _count_finished(
    task: Any = None, state: str | None = None, retval: Any = None, **_: Any
) -> None:
    request = task.request
    labels = _labels(task.name, request.delivery_info)
    metrics = worker_metrics()
    started = getattr(request, STARTED_AT, None)
    if started is not None:
        metrics.runtime.labels(*labels).observe(time.monotonic() - started)
    if state == states.SUCCESS:
        metrics.succeeded.labels(*labels).inc()
    elif state == states.FAILURE:
        exception = type(retval).__name__ if isinstance(retval, BaseException) else "unknown"
        metrics.failed.labels(*labels, exception).inc()
    elif state == states.RETRY:
        metrics.retried.labels(*labels).inc()
    elif state == states.REJECTED:
        metrics.rejected.labels(*labels).inc()


@task_revoked.connect
def _count_revoked(request: Any = None, **_: object) -> None:
    if request is not None:
        labels = _labels(request.name, request.delivery_info)
        worker_metrics().revoked.labels(*labels).inc()


@task_rejected.connect
@task_unknown.connect
def _count_refused(message: Any = None, **_: object) -> None:
    """A message the consumer refused (unknown task, malformed): rejected before any run."""
    if message is not None:
        labels = _labels((message.headers or {}).get("task"), message.delivery_info)
        worker_metrics().rejected.labels(*labels).inc()


# The worker as a whole, from its main process.


class WorkerTelemetry:
    """One worker's probe server and beat, and the figures both show."""

    def __init__(self, worker: Any, settings: Settings) -> None:
        self.worker = worker
        self.settings = settings.telemetry
        self.key_prefix = settings.key_prefix
        self.hostname = str(worker.hostname)
        self.stopping = False
        self.probes: ProbeServer | None = None
        if self.settings.worker_port:
            # Bound now, served from `worker_ready`: a port already taken stops the worker
            # before it takes any task.
            registry = served_registry()
            registry.register(WorkerStateCollector(self))
            self.probes = ProbeServer(
                self.settings.address,
                self.settings.worker_port,
                lambda: generate_latest(registry),
                lambda: Verdict(True, "worker process answers"),
                self.readiness,
            )
        self._stop = threading.Event()
        self._beats: threading.Thread | None = None

    @property
    def pool(self) -> str:
        """The pool's -P name (prefork, gevent, threads, solo)."""
        return type(self.worker.pool).__module__.rsplit(".", 1)[-1]

    @property
    def queues(self) -> list[str]:
        queues = self.worker.app.amqp.queues
        return sorted(queues.consume_from or queues)

    def pool_size(self) -> tuple[int, int, int]:
        """(current, min, max): the autoscaler's bounds, or the fixed pool's size thrice."""
        autoscaler = getattr(self.worker, "autoscaler", None)
        if autoscaler is not None:
            return (
                int(autoscaler.processes),
                int(autoscaler.min_concurrency),
                int(autoscaler.max_concurrency),
            )
        size = int(getattr(self.worker.pool, "num_processes", None) or self.worker.concurrency)
        return size, size, size

    def active(self) -> int:
        return len(worker_state.active_requests)

    def readiness(self) -> Verdict:
        if self.stopping or worker_state.should_stop is not None:
            return Verdict(False, "stopping")
        return PROGRESS.verdict(self.settings.stall_after, self.active())

    def beat(self, rate: FinishedRate) -> WorkerBeat:
        current, low, high = self.pool_size()
        return WorkerBeat(
            hostname=self.hostname,
            pid=os.getpid(),
            pool=self.pool,
            queues=self.queues,
            pool_current=current,
            pool_min=low,
            pool_max=high,
            active=self.active(),
            ready=self.readiness().ok,
            progress_age=round(PROGRESS.age(), 3),
            finished_per_second=rate.update(time.monotonic(), PROGRESS.finished),
            seen_at=time.time(),
        )

    def start(self) -> None:
        """At `worker_ready`: serve the probes (unless the port is 0) and start beating."""
        if self.probes is not None:
            self.probes.start()
        self._beats = threading.Thread(target=self._beat_loop, name="taskhub-beat", daemon=True)
        self._beats.start()

    def stop(self) -> None:
        self.stopping = True
        if self.probes is not None:
            self.probes.stop()
            self.probes = None
        self._stop.set()
        if self._beats is not None:
            self._beats.join(STOP_WAIT_SECONDS)

    def _beat_loop(self) -> None:
        """Record this worker's beat every `beat_interval` s, and leave the list when stopped.
        Nothing here may disturb the worker: a failure is logged once per streak, then retried."""
        interval = self.settings.beat_interval
        rate = FinishedRate()
        failing = False
        while True:
            try:
                beat = self.beat(rate)
                record_beat(
                    broker_redis(), self.key_prefix, "worker", self.hostname, beat, interval
                )
            except Exception as error:
                if not failing:
                    log.warning(
                        "worker beat: cannot record it (%s: %s); `taskhub status` misses this "
                        "worker until it can",
                        type(error).__name__,
                        error,
                    )
                failing = True
            else:
                if failing:
                    log.info("worker beat: recorded again")
                failing = False
            if self._stop.wait(interval):
                break
        try:
            forget_beat(broker_redis(), self.key_prefix, "worker", self.hostname)
        except Exception as error:  # it expires after a few beats anyway
            log.debug("worker beat: cannot remove it: %s", error)


class WorkerStateCollector(Collector):
    """The worker's own gauges, read at scrape time in the main process (so no pool child's
    stale value can outlive it)."""

    def __init__(self, telemetry: WorkerTelemetry) -> None:
        self.telemetry = telemetry

    def collect(self) -> Iterator[Metric]:
        telemetry = self.telemetry
        host = [telemetry.hostname]

        def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, documentation, labels=["hostname"])
            family.add_metric(host, value)
            return family

        yield gauge("celery_worker_up", "1 while the worker runs.", 0 if telemetry.stopping else 1)
        yield gauge("celery_worker_tasks_active", "Tasks running now.", telemetry.active())
        pool = GaugeMetricFamily(
            "taskhub_worker_pool_size",
            "The pool's size now and the autoscaler's bounds.",
            labels=["hostname", "bound"],
        )
        for bound, size in zip(("current", "min", "max"), telemetry.pool_size(), strict=True):
            pool.add_metric([telemetry.hostname, bound], size)
        yield pool
        yield gauge(
            "taskhub_worker_ready",
            "1 when /readyz answers 200: the consumer progressed within stall_after.",
            1 if telemetry.readiness().ok else 0,
        )
        yield gauge(
            "taskhub_worker_consumer_progress_age_seconds",
            "Seconds since the consumer last polled the broker or finished a task.",
            PROGRESS.age(),
        )


@worker_init.connect
def _prepare(sender: Any = None, **_: object) -> None:
    """Choose where metric values live before a prefork pool forks."""
    global _hostname, _telemetry
    if sender is None:
        return
    _hostname = str(sender.hostname)
    if pool_forks(sender.pool_cls):
        use_multiprocess_values()
        atexit.register(remove_multiprocess_dir)
    else:
        use_single_process_values()
    _telemetry = WorkerTelemetry(sender, get_settings())


@worker_ready.connect
def _start(**_: object) -> None:
    if _telemetry is not None:
        _telemetry.start()
        atexit.register(_stop, pid=os.getpid())


@worker_shutting_down.connect
def _stopping(**_: object) -> None:
    """From the first shutdown signal on, /readyz says so (the soft shutdown may take a while)."""
    if _telemetry is not None:
        _telemetry.stopping = True


@worker_shutdown.connect
def _stop(pid: int | None = None, **_: object) -> None:
    """At a warm shutdown's end, or at exit: Celery's cold shutdown (SIGQUIT, and SIGTERM with
    REMAP_SIGTERM=SIGQUIT) never sends `worker_shutdown`."""
    global _telemetry
    if pid is not None and pid != os.getpid():
        return  # a pool child inherited the exit hook: the main process does this
    telemetry, _telemetry = _telemetry, None
    if telemetry is not None:
        telemetry.stop()
    remove_multiprocess_dir()


@worker_process_init.connect
def _leave_the_main_process_its_port(**_: object) -> None:
    """A pool child closes the probe socket it inherited: kept open, it would outlive a killed
    main process and stop the restarted worker from binding its port."""
    global _telemetry
    if _telemetry is not None and _telemetry.probes is not None:
        _telemetry.probes.server.socket.close()
    _telemetry = None


@worker_process_shutdown.connect
def _forget_child(pid: int | None = None, **_: object) -> None:
    if pid is not None:
        process_gone(pid)
