"""From a raw MQTT message to a task call or a dead letter: size, decode, route, validate.

Nothing here raises on bad input; every message gets exactly one verdict. The bridge judges each
message it reads here, and `taskhub deadletter replay` judges a refused one again the same way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from taskhub.deadletters import DeadLetter, Reason
from taskhub.redaction import redact
from taskhub.replies import REPLY_HEADER, Reply, ReplyAddress, ReplyStatus, error_document
from taskhub.response_topics import ResponseTopics
from taskhub.routes import RouteTable
from taskhub.task_messages import TaskCall, deterministic_task_id


@dataclass(frozen=True, slots=True)
class RawMessage:
    topic: str
    payload: bytes
    properties: dict[str, Any] | Callable[[], dict[str, Any]]
    """The MQTT properties, or how to read them: decoding them costs as much as the rest of a
    message's handling, and only a dead letter needs them."""

    reply: ReplyAddress | None = None
    """Where to reply: the message's MQTT 5 Response Topic and Correlation Data, if it has them."""
    trace: Mapping[str, str] | None = None
    """Its W3C trace context (`traceparent`, `tracestate`) from MQTT 5 user properties, read only
    while tracing is on."""

    def mqtt_properties(self) -> dict[str, Any]:
        return self.properties() if callable(self.properties) else self.properties


def first_error(error: ValidationError) -> str:
    problems = error.errors(include_url=False)
    first = problems[0]
    where = ".".join(str(part) for part in first["loc"]) or "payload"
    more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{where}: {first['msg']}{more}"


class Intake:
    """Judges messages against the route table."""

    def __init__(
        self,
        routes: RouteTable,
        max_payload_bytes: int,
        response_topics: ResponseTopics | None = None,
    ) -> None:
        self.routes = routes
        self.max_payload_bytes = max_payload_bytes
        self.response_topics = response_topics or ResponseTopics()
        """Where requests may ask for replies; none by default (replay judges no requests)."""

    # A return per verdict, in the order the checks run.
    def judge(self, message: RawMessage) -> TaskCall | DeadLetter:  # noqa: C901, PLR0911
        def dead(reason: Reason, detail: str, route: str | None = None) -> DeadLetter:
            return DeadLetter(
                reason,
                detail,
                topic=message.topic,
                payload=message.payload,
                route=route,
                properties=message.mqtt_properties(),
            )

        matched = self.routes.match(message.topic)
        if matched is None:
            return dead(Reason.NO_ROUTE, f"no route matches topic {message.topic!r}")
        route = matched.route
        if message.reply is not None:
            refused = self.response_topics.refusal(message.reply.topic)
            if refused is not None:
                return dead(Reason.RESPONSE_TOPIC_REFUSED, refused, route.name)
        for name, value in matched.params.items():
            if not route.parameter_rule.fullmatch(value):
                return dead(
                    Reason.BAD_TOPIC_PARAMETER,
                    f"topic parameter {name}={value[:80]!r} must match "
                    f"{route.parameter_rule.pattern}",
                    route.name,
                )
        if len(message.payload) > self.max_payload_bytes:
            return dead(
                Reason.PAYLOAD_TOO_LARGE,
                f"{len(message.payload)} bytes > TASKHUB_BRIDGE__MAX_PAYLOAD_BYTES="
                f"{self.max_payload_bytes}",
                route.name,
            )
        try:
            # The common case in one step, parsed and validated by pydantic-core.
            payload = route.payload.model_validate_json(message.payload)
        except (ValidationError, ValueError):
            # Judge again step by step, for the precise reason it is refused.
            try:
                text = message.payload.decode("utf-8")
            except UnicodeDecodeError as error:
                return dead(Reason.INVALID_UTF8, str(error), route.name)
            try:
                document = json.loads(text)
            except (ValueError, RecursionError) as error:
                return dead(Reason.INVALID_JSON, str(error), route.name)
            try:
                payload = route.payload.model_validate(document)
            except ValidationError as error:
                return dead(Reason.SCHEMA, first_error(error), route.name)
        if route.key is not None:
            identity = str(getattr(payload, route.key))
        else:
            digest = hashlib.sha256(message.payload).hexdigest()
            identity = f"{message.topic}\x00{digest}"
        return TaskCall(
            task=route.task,
            task_id=deterministic_task_id(route.task, identity),
            queue=route.queue,
            args=(payload.model_dump(mode="json"),),
            kwargs=matched.params,
            headers=_reply_headers(message.reply),
        )

    def refusal_reply(self, message: RawMessage, letter: DeadLetter) -> Reply | None:
        """The REFUSED reply a request the bridge dead-letters gets: None for a message that asks
        for none, or whose Response Topic is refused (never published to)."""
        address = message.reply
        if (
            address is None
            or letter.reason is Reason.RESPONSE_TOPIC_REFUSED
            or not self.response_topics.allows(address.topic)
        ):
            return None
        document = error_document(letter.reason.value, redact(letter.detail))
        return Reply(address, ReplyStatus.REFUSED, document)


def _reply_headers(address: ReplyAddress | None) -> dict[str, Any] | None:
    """The task message headers that carry a request's reply address to the worker."""
    return None if address is None else {REPLY_HEADER: address.header()}
