"""OpenTelemetry set-up shared by the bridge and the workers: one trace from a device's publish,
through the queue, to the upstream HTTP calls (docs/tracing.md).

Off by default. `start()` installs a tracer provider once per process, exporting to OTLP when
OTEL_EXPORTER_OTLP_ENDPOINT is set; until then opentelemetry's API hands out no-op spans. Code on a
hot path asks `enabled()` first and skips the trace work altogether.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from taskhub.settings import Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
"""W3C Trace Context names: MQTT 5 user properties (the "Trace Context: MQTT" draft) and Celery
message headers (opentelemetry-instrumentation-celery) alike."""
OTLP_ENDPOINT_VARIABLE = "OTEL_EXPORTER_OTLP_ENDPOINT"

_provider: TracerProvider | None = None


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
    trace.set_tracer_provider(provider)
    _provider = provider
    return provider
