"""The metrics a worker's tasks and upstream calls record (docs/observability.md, "Workers"), in
whichever process runs them, and how they reach the worker's `/metrics`.

A prefork worker runs its tasks in forked children, so its metrics live in prometheus_client's
multiprocess mode: each process writes its values to files in a private directory, and the main
process merges them at each scrape. prometheus_client picks a value's storage when the value is
created (`values.ValueClass`, read at creation), so the metrics here are created lazily, on first
use, after the worker chose the mode at `worker_init`. A gevent worker is one process and keeps
plain values in a registry of its own.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, values

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

TASK_NAME, HOSTNAME, QUEUE = "name", "hostname", "queue_name"
TASK_LABELS = (TASK_NAME, HOSTNAME, QUEUE)
"""celery-exporter's labels, so its dashboards read taskhub's workers as they are."""

RUNTIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
"""Seconds: Prometheus's defaults, then up to the longest task time limit worth telling apart."""
QUEUE_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
"""Seconds from queued to started: a deferred task's wait includes its deferrals."""
RATELIMIT_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
"""Seconds a request waited for its host's rate limit (TASKHUB_HTTP__MAX_INLINE_WAIT bounds it)."""


@dataclass(frozen=True, slots=True)
class WorkerMetrics:
    """Every metric recorded in a worker's processes. The gauges of the worker as a whole (pool,
    readiness) are read at scrape time instead (taskhub/telemetry/worker.py)."""

    registry: CollectorRegistry
    """Where the metrics are registered; served as is by a one-process worker only."""
    received: Counter
    started: Counter
    succeeded: Counter
    failed: Counter
    retried: Counter
    rejected: Counter
    revoked: Counter
    runtime: Histogram
    queue_wait: Histogram
    upstream_requests: Counter
    upstream_throttled: Counter
    ratelimit_waits: Counter
    ratelimit_wait_seconds: Histogram
    cache: Counter
    breaker_open: Gauge

    @classmethod
    def create(cls) -> WorkerMetrics:
        registry = CollectorRegistry(auto_describe=True)

        def counter(name: str, documentation: str, *labels: str) -> Counter:
            return Counter(name, documentation, labels, registry=registry)

        return cls(
            registry=registry,
            received=counter("celery_task_received", "Tasks received.", *TASK_LABELS),
            started=counter("celery_task_started", "Tasks started.", *TASK_LABELS),
            succeeded=counter("celery_task_succeeded", "Tasks succeeded.", *TASK_LABELS),
            failed=counter("celery_task_failed", "Tasks failed.", *TASK_LABELS, "exception"),
            retried=counter("celery_task_retried", "Tasks retried or deferred.", *TASK_LABELS),
            rejected=counter("celery_task_rejected", "Tasks rejected.", *TASK_LABELS),
            revoked=counter("celery_task_revoked", "Tasks revoked.", *TASK_LABELS),
            runtime=Histogram(
                "celery_task_runtime",
                "Seconds a task ran, whatever its outcome.",
                TASK_LABELS,
                registry=registry,
                buckets=RUNTIME_BUCKETS,
            ),
            queue_wait=Histogram(
                "taskhub_task_queue_wait_seconds",
                "Seconds from a task's first queueing (taskhub_sent_at) to its start.",
                TASK_LABELS,
                registry=registry,
                buckets=QUEUE_WAIT_BUCKETS,
            ),
            upstream_requests=counter(
                "taskhub_upstream_requests",
                "HTTP requests to upstream hosts, by answer (or error).",
                "host",
                "status",
            ),
            upstream_throttled=counter(
                "taskhub_upstream_throttled", "Upstream answers 429 (too many requests).", "host"
            ),
            ratelimit_waits=counter(
                "taskhub_upstream_ratelimit_waits",
                "Requests that waited for their host's shared rate limit.",
                "host",
            ),
            ratelimit_wait_seconds=Histogram(
                "taskhub_upstream_ratelimit_wait_seconds",
                "Seconds a request waited for its host's shared rate limit.",
                ["host"],
                registry=registry,
                buckets=RATELIMIT_WAIT_BUCKETS,
            ),
            cache=counter(
                "taskhub_upstream_cache",
                "Upstream cache lookups (hit, miss, revalidated).",
                "result",
            ),
            breaker_open=Gauge(
                "taskhub_upstream_breaker_open",
                "1 while the host's breaker is open, as a task last saw it.",
                ["host"],
                registry=registry,
                # The latest view any live process had: a breaker is one state shared in Redis.
                multiprocess_mode="livemostrecent",
            ),
        )


_metrics: WorkerMetrics | None = None
_multiproc_dir: str | None = None
_multiproc_owner = 0
"""The pid that made the directory: a forked child must not remove it."""


def worker_metrics() -> WorkerMetrics:
    """This process's metrics, created on first use (after `use_*_process_values`)."""
    global _metrics
    metrics = _metrics
    if metrics is None:
        metrics = _metrics = WorkerMetrics.create()
    return metrics


def use_multiprocess_values() -> str:
    """Make every metric value from now on live in a fresh private directory shared with the
    processes this one forks; returns the directory. Call before the pool forks."""
    global _metrics, _multiproc_dir, _multiproc_owner
    remove_multiprocess_dir()
    _multiproc_dir = tempfile.mkdtemp(prefix=f"taskhub-metrics-{os.getpid()}-")
    _multiproc_owner = os.getpid()
    os.environ[MULTIPROC_DIR_ENV] = _multiproc_dir
    values.ValueClass = values.MultiProcessValue()
    _metrics = None  # any created before the switch held plain values: start again
    return _multiproc_dir


def use_single_process_values() -> None:
    """Plain in-memory values, even when the environment names a multiprocess directory (which
    would make this process write files nobody merges)."""
    global _metrics
    remove_multiprocess_dir()
    os.environ.pop(MULTIPROC_DIR_ENV, None)
    values.ValueClass = values.MutexValue
    _metrics = None


def multiprocess_dir() -> str | None:
    return _multiproc_dir


def served_registry() -> CollectorRegistry:
    """The registry `/metrics` serves: the files of every process, merged, in multiprocess
    mode; this process's own metrics otherwise."""
    if _multiproc_dir is None:
        return worker_metrics().registry
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=_multiproc_dir)
    return registry


def process_gone(pid: int) -> None:
    """Drop a finished pool child's live gauges (its counters stay: they were counted)."""
    if _multiproc_dir is not None:
        multiprocess.mark_process_dead(pid, _multiproc_dir)


def remove_multiprocess_dir() -> None:
    global _multiproc_dir
    if _multiproc_dir is not None and os.getpid() == _multiproc_owner:
        shutil.rmtree(_multiproc_dir, ignore_errors=True)
        os.environ.pop(MULTIPROC_DIR_ENV, None)
        _multiproc_dir = None
