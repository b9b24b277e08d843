"""The route table: which MQTT topics become which Celery task, on which queue.

Adding a route is one entry in ROUTES below. Everything else (subscriptions, Celery queues,
`task_routes`, worker imports, Flower's queue list) is derived from it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from taskhub.payloads import CheckinTweet, Payload, SensorReading
from taskhub.topics import TopicError, TopicPattern

_QUEUE_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


class RouteError(ValueError):
    """The route table is inconsistent; the message names the route and what to fix."""


@dataclass(frozen=True, slots=True)
class Route:
    """One topic pattern -> one task on one queue, with the model its payload must satisfy.

    `key` names the payload field that identifies a message (for deterministic task ids);
    without one, the topic and payload bytes identify it.
    """

    pattern: TopicPattern
    task: str
    queue: str
    payload: type[Payload]
    qos: int | None = None
    key: str | None = None
    name: str = field(default="")

    def __post_init__(self) -> None:
        where = f"route {self.pattern}"
        if not self.queue or not set(self.queue) <= _QUEUE_NAME_CHARS:
            raise RouteError(f"{where}: queue {self.queue!r} must be letters, digits and _.-")
        module, _, function = self.task.rpartition(".")
        if not module or not function.isidentifier():
            raise RouteError(f"{where}: task {self.task!r} must be a dotted path module.function")
        if self.qos not in (None, 0, 1, 2):
            raise RouteError(f"{where}: qos must be 0, 1 or 2 (got {self.qos!r})")
        if self.key is not None and self.key not in self.payload.model_fields:
            raise RouteError(f"{where}: key {self.key!r} is not a field of {self.payload.__name__}")
        if not self.name:
            object.__setattr__(self, "name", self.queue + ":" + self.pattern.text)

    @property
    def task_module(self) -> str:
        return self.task.rpartition(".")[0]


@dataclass(frozen=True, slots=True)
class RouteMatch:
    route: Route
    params: dict[str, str]


class RouteTable:
    """An ordered, consistent set of routes; the first route whose pattern matches wins."""

    def __init__(self, routes: Iterable[Route], topic_prefix: str = "") -> None:
        self.routes = tuple(
            _with_prefix(route, topic_prefix) if topic_prefix else route for route in routes
        )
        self.topic_prefix = topic_prefix
        self._check()

    def _check(self) -> None:
        seen: dict[str, Route] = {}
        queue_of_task: dict[str, str] = {}
        for route in self.routes:
            if route.pattern.mqtt_filter in seen:
                raise RouteError(
                    f"routes {seen[route.pattern.mqtt_filter].pattern} and {route.pattern} "
                    "subscribe to the same filter; remove one"
                )
            seen[route.pattern.mqtt_filter] = route
            queue = queue_of_task.setdefault(route.task, route.queue)
            if queue != route.queue:
                raise RouteError(
                    f"task {route.task} is routed to both queue {queue!r} and {route.queue!r}; "
                    "a task has one queue so that task.delay() lands where the bridge sends it"
                )

    def __iter__(self) -> Iterator[Route]:
        return iter(self.routes)

    def __len__(self) -> int:
        return len(self.routes)

    def match(self, topic: str) -> RouteMatch | None:
        for route in self.routes:
            params = route.pattern.match(topic)
            if params is not None:
                return RouteMatch(route, params)
        return None

    @property
    def queues(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(route.queue for route in self.routes))

    @property
    def task_queues(self) -> dict[str, str]:
        return {route.task: route.queue for route in self.routes}

    @property
    def task_modules(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(route.task_module for route in self.routes))


def _with_prefix(route: Route, prefix: str) -> Route:
    try:
        pattern = route.pattern.with_prefix(prefix)
    except TopicError as error:
        raise RouteError(f"TASKHUB_TOPIC_PREFIX {prefix!r} makes a bad filter: {error}") from None
    return Route(
        pattern=pattern,
        task=route.task,
        queue=route.queue,
        payload=route.payload,
        qos=route.qos,
        key=route.key,
        name=route.name,
    )


ROUTES: tuple[Route, ...] = (
    Route(
        pattern=TopicPattern("checkins/{city}/#"),
        task="tasks.checkins.resolve_checkin",
        queue="checkins",
        payload=CheckinTweet,
        key="id",
    ),
    Route(
        pattern=TopicPattern("sensors/{device_id}/reading"),
        task="tasks.sensors.record_reading",
        queue="sensors",
        payload=SensorReading,
    ),
)


def route_table(topic_prefix: str = "") -> RouteTable:
    """The project's routes, checked, below `topic_prefix`."""
    return RouteTable(ROUTES, topic_prefix)
