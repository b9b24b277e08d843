"""The bridge's span for each message it judges, from the socket read to the moment the message is
durable in Redis or the spool, and the trace context its task message carries on to the worker
(docs/tracing.md, "At the bridge").

One span per message, not a receive span and a publish span: the bridge's part of the trace is
one step (read, judge, land), and a second span would double the cost at 25,000 messages a
second. Its context goes into the task message's headers exactly as
opentelemetry-instrumentation-celery's `apply_async` span injects its own (`traceparent`, and
`tracestate` when there is one), so a worker run under the instrumentation makes its `run/<task>`
span a child of this one. Imported only while tracing is on.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider

from bridge.clock import SYSTEM_CLOCK, Clock
from bridge.source import Received
from taskhub.deadletters import DeadLetter
from taskhub.routes import RouteTable
from taskhub.task_messages import TaskCall

TRACER_NAME = "taskhub.bridge"
OPERATION = "process"
"""Messaging semantic conventions: a CONSUMER span that handles a message pushed to it."""
SPOOLED = "taskhub.spooled"
"""True on the span of a message the spool took (Redis was down or behind); absent when it
landed in Redis, so the common case pays for no attribute at its end."""
ABANDONED = "abandoned: left unacked for the broker to send again"


class MessageSpans:
    """Starts a span as the loop judges each message and ends it as the batch is acked."""

    def __init__(
        self,
        routes: RouteTable,
        provider: TracerProvider | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        """`provider` None: the one opentelemetry's API hands out (taskhub.tracing.start's)."""
        self.tracer = trace.get_tracer(TRACER_NAME, tracer_provider=provider)
        self.routes = routes
        self.clock = clock

    def start(
        self, received: Received, verdict: TaskCall | DeadLetter
    ) -> tuple[Span, TaskCall | DeadLetter]:
        """The message's span, begun when it was read, and a task call whose headers carry it."""
        message = received.message
        # The publisher's context, or none at all (not the loop's current one): a new trace.
        parent = propagate.extract(message.trace) if message.trace else Context()
        matched = self.routes.match(message.topic)
        # The conventions' required and conditionally required attributes, and the message id:
        # each costs about a microsecond (docs/tracing.md, "At the bridge").
        attributes: dict[str, str] = {
            "messaging.system": "mqtt",
            "messaging.operation.type": OPERATION,
            "messaging.operation.name": OPERATION,
            "messaging.destination.name": message.topic,
        }
        if matched is not None:
            template = matched.route.pattern.text
            attributes["messaging.destination.template"] = template
            name = f"{OPERATION} {template}"
        else:
            name = OPERATION
        if isinstance(verdict, TaskCall):
            # As the instrumentation's own spans name the task message they send and run.
            attributes["messaging.message.id"] = verdict.task_id
        read_at = received.read_at + self.clock.wall() - self.clock.now()  # monotonic to epoch
        span = self.tracer.start_span(
            name,
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            start_time=int(read_at * 1e9),
        )
        if isinstance(verdict, DeadLetter):
            return span, verdict
        headers = dict(verdict.headers or {})
        propagate.inject(headers, context=trace.set_span_in_context(span))
        return span, replace(verdict, headers=headers)

    def ended(self, spans: Iterable[tuple[Span | None, DeadLetter | None]], spooled: bool) -> None:
        """The batch is durable (in Redis, or `spooled`) and acked; a dead letter's span ends in
        error, named by its reason."""
        end_time = self._now()
        for span, letter in spans:
            if span is None:
                continue
            if letter is not None:
                span.set_attribute("error.type", letter.reason.value)
                span.set_status(Status(StatusCode.ERROR, letter.reason.value))
            if spooled:
                span.set_attribute(SPOOLED, True)
            span.end(end_time=end_time)

    def abandoned(self, spans: Iterable[Span | None]) -> None:
        """Messages given up unacked (connection lost, or shutdown): the broker sends them again,
        and their next reading gets a span of its own."""
        end_time = self._now()
        for span in spans:
            if span is not None:
                span.set_status(Status(StatusCode.ERROR, ABANDONED))
                span.end(end_time=end_time)

    def _now(self) -> int:
        return int(self.clock.wall() * 1e9)
