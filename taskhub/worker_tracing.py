"""Tracing in a worker: each task's span continues the trace its message carries (the bridge's
`traceparent` header, or any producer's that opentelemetry-instrumentation-celery wrote), and its
HTTP calls, rate-limit waits and cache lookups are its children (docs/tracing.md).

Started in the process that runs the tasks: a prefork pool child after the fork
(`worker_process_init`), since an exporter's thread and connections belong to the process that
made them; with any other pool (gevent, threads, solo) the main process at `worker_init`. Spans
still buffered are exported when that process ends. When tracing is not wanted, nothing is
instrumented and opentelemetry's instrumentation packages are not even imported.

Connected by importing this module (taskhub/celery.py does).
"""

from __future__ import annotations

import atexit
import logging
import os
from typing import TYPE_CHECKING, Any

from celery.signals import (
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
)

from taskhub import tracing
from taskhub.settings import Settings, settings_or_exit
from taskhub.worker import pool_forks

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from urllib3.connectionpool import HTTPConnectionPool

log = logging.getLogger("taskhub.tracing")

SERVICE_NAME = "taskhub-worker"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"

_started_in: int | None = None
"""The pid of the process this module started tracing in."""


@worker_init.connect
def _trace_the_main_process(sender: Any = None, **_: object) -> None:
    if sender is not None and not pool_forks(sender.pool_cls):
        begin(settings_or_exit())


@worker_process_init.connect
def _trace_a_pool_child(**_: object) -> None:
    begin(settings_or_exit())


@worker_process_shutdown.connect
@worker_shutdown.connect
def _export_the_rest(**_: object) -> None:
    end()


def begin(settings: Settings, exporter: SpanExporter | None = None) -> bool:
    """Trace the tasks this process runs, if `settings` or the environment ask for it (or
    `exporter` is given); whether it does."""
    global _started_in
    provider = tracing.start(SERVICE_NAME, settings, exporter)
    if provider is None:
        return False
    instrument(provider)
    if _started_in != os.getpid():
        _started_in = os.getpid()
        atexit.register(_at_exit, os.getpid())
    log.info("tracing tasks: %s", os.environ.get(tracing.OTLP_ENDPOINT_VARIABLE) or "in memory")
    return True


def instrument(provider: TracerProvider) -> None:
    """Spans for tasks (continuing their message's trace context; a producer span for each task
    sent) and for HTTP calls through urllib3 (tasks/http.py)."""
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.urllib3 import URLLib3Instrumentor

    if not CeleryInstrumentor().is_instrumented_by_opentelemetry:
        CeleryInstrumentor().instrument(tracer_provider=provider)
    if not URLLib3Instrumentor().is_instrumented_by_opentelemetry:
        URLLib3Instrumentor().instrument(tracer_provider=provider, request_hook=_name_the_server)


def end() -> None:
    """Stop instrumenting and export what is still buffered."""
    if not tracing.enabled():
        return
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.urllib3 import URLLib3Instrumentor

    for instrumentor in (CeleryInstrumentor(), URLLib3Instrumentor()):
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()
    tracing.stop()


def _at_exit(pid: int) -> None:
    """A cold shutdown (SIGTERM with REMAP_SIGTERM=SIGQUIT) sends no `worker_shutdown`."""
    if pid == os.getpid():
        end()


def _name_the_server(span: Any, pool: HTTPConnectionPool, _: object) -> None:
    """The upstream's host and port as attributes of their own, to search and group by: the
    instrumentation's default (old) conventions put them only inside the URL."""
    if span.is_recording():
        span.set_attribute(SERVER_ADDRESS, str(pool.host))
        if pool.port is not None:
            span.set_attribute(SERVER_PORT, int(pool.port))
