"""OpenTelemetry set-up shared by the bridge and the workers: one trace from a device's publish,
through the queue, to the upstream HTTP calls (docs/tracing.md).

Off by default. `start()` installs a tracer provider once per process, exporting to OTLP when
OTEL_EXPORTER_OTLP_ENDPOINT is set; until then opentelemetry's API hands out no-op spans. Code on a
hot path asks `enabled()` first and skips the trace work altogether.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from taskhub.settings import Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer
    from opentelemetry.util.types import AttributeValue

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
"""W3C Trace Context names: MQTT 5 user properties (the "Trace Context: MQTT" draft) and Celery
message headers (opentelemetry-instrumentation-celery) alike."""
OTLP_ENDPOINT_VARIABLE = "OTEL_EXPORTER_OTLP_ENDPOINT"

TRACER_NAME = "taskhub"
TWEET_ID = "taskhub.tweet_id"
"""Span attribute naming the tweet a span worked on: what to search a trace by (docs/tracing.md)."""

_provider: TracerProvider | None = None
_global_provider_set = False


def wanted(settings: Settings) -> bool:
    """Whether these settings and the environment ask for tracing."""
    return settings.tracing.enabled or bool(os.environ.get(OTLP_ENDPOINT_VARIABLE, "").strip())


def enabled() -> bool:
    """Whether this process traces: `start()` installed a provider."""
    return _provider is not None


def start(
    service_name: str, settings: Settings, exporter: SpanExporter | None = None
) -> TracerProvider | None:
    """Trace this process if `settings` ask for it or `exporter` is given (tests pass an in-memory
    one); the provider, or None when tracing stays off. Safe to call again: the first wins."""
    global _provider
    if _provider is not None:
        return _provider
    if exporter is None and not wanted(settings):
        return None
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    if os.environ.get(OTLP_ENDPOINT_VARIABLE, "").strip():
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    global _global_provider_set
    if not _global_provider_set:  # opentelemetry's global takes one provider per process
        trace.set_tracer_provider(provider)
        _global_provider_set = True
    _provider = provider
    return provider


def stop() -> None:
    """Export the spans still buffered and stop tracing in this process: at a worker process's
    exit (a prefork child ends with os._exit, which skips opentelemetry's own atexit hook), or a
    test's end. `start()` may then install a new provider, though opentelemetry's global stays
    the first: taskhub's own spans come from `tracer()`, which follows the current one."""
    global _provider
    provider, _provider = _provider, None
    if provider is not None:
        provider.shutdown()


def tracer() -> Tracer:
    """taskhub's tracer, from this process's provider; ask `enabled()` first on a hot path."""
    if _provider is None:
        from opentelemetry import trace

        return trace.NoOpTracer()
    return _tracer_of(_provider)


@functools.cache
def _tracer_of(provider: TracerProvider) -> Tracer:
    return provider.get_tracer(TRACER_NAME)


def annotate(attributes: Mapping[str, AttributeValue]) -> None:
    """Set `attributes` on the current span (a task's, an HTTP call's), if this process traces."""
    if _provider is None:
        return
    from opentelemetry import trace

    trace.get_current_span().set_attributes(attributes)


def reply_properties(span: Span | None = None) -> tuple[tuple[str, str], ...]:
    """A reply's trace context as MQTT 5 user properties (`traceparent`, `tracestate`), so the
    requester can continue the trace: `span`'s, else the current span's (the task's, in a worker);
    none while this process does not trace."""
    if span is None and not enabled():
        return ()
    from opentelemetry import propagate, trace

    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=None if span is None else trace.set_span_in_context(span))
    return tuple(carrier.items())
