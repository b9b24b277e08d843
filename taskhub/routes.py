"""The route table: which MQTT topics become which Celery task, on which queue.

Adding a route is one entry in ROUTES below (or in a module of your own named by TASKHUB_ROUTES).
Everything else (subscriptions, Celery queues, `task_routes`, worker imports, Flower's queue list)
is derived from it.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum

from taskhub.payloads import CheckinTweet, Payload, SensorReading
from taskhub.settings import QOS_2_REFUSAL, SUBSCRIPTION_QOS, Settings
from taskhub.topics import TopicError, TopicPattern

_QUEUE_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
SAFE_PARAMETER = re.compile(r"[A-Za-z0-9_.-]{1,64}")
"""What a named topic parameter may hold unless its route says otherwise. Tasks put parameters
in Redis keys (`<prefix>:reading:<device_id>`), so `:`, spaces, wildcards and unbounded lengths
are refused at the bridge as dead letters."""
DEFAULT_ROUTES = "taskhub.routes:ROUTES"


class WorkerPool(StrEnum):
    """The kind of worker a route's task needs, named as `celery worker -P` names it."""

    GEVENT = "gevent"
    """I/O-bound work (HTTP, Redis): hundreds of tasks overlap in one process per core."""
    PREFORK = "prefork"
    """CPU-bound work: one task per process, so a long computation blocks nothing else."""


class RouteError(ValueError):
    """The route table is inconsistent; the message names the route and what to fix."""


@dataclass(frozen=True, slots=True)
class Route:
    """One topic pattern -> one task on one queue, with the model its payload must satisfy.

    `key` names the payload field that identifies a message (for deterministic task ids);
    without one, the topic and payload bytes identify it. Every named topic parameter must
    match `parameter_rule` whole, or the message is dead-lettered. `pool` says which kind of
    worker consumes the route's queue.
    """

    pattern: TopicPattern
    task: str
    queue: str
    payload: type[Payload]
    qos: int | None = None
    key: str | None = None
    name: str = field(default="")
    parameter_rule: re.Pattern[str] = SAFE_PARAMETER
    pool: WorkerPool = WorkerPool.GEVENT

    def __post_init__(self) -> None:
        where = f"route {self.pattern}"
        if not self.queue or not set(self.queue) <= _QUEUE_NAME_CHARS:
            raise RouteError(f"{where}: queue {self.queue!r} must be letters, digits and _.-")
        module, _, function = self.task.rpartition(".")
        if not module or not function.isidentifier():
            raise RouteError(f"{where}: task {self.task!r} must be a dotted path module.function")
        if self.qos not in (None, *SUBSCRIPTION_QOS):
            raise RouteError(f"{where}: qos must be 0 or 1 (got {self.qos!r}): {QOS_2_REFUSAL}")
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
        pool_of_queue: dict[str, WorkerPool] = {}
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
            pool = pool_of_queue.setdefault(route.queue, route.pool)
            if pool != route.pool:
                raise RouteError(
                    f"queue {route.queue!r} has routes for both {pool} and {route.pool} "
                    "workers; give the CPU-bound route a queue of its own"
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

    def subscriptions(self, default_qos: int) -> list[tuple[str, int]]:
        """(filter, QoS) pairs that cover every route, subscribed by namespace.

        Each route's namespace is subscribed as `<namespace>/#` (see TopicPattern.namespace), at
        the highest QoS of the routes in it; a namespace inside another is left out, so no message
        arrives twice. A route that starts with a wildcard is subscribed as it is.
        """
        wanted: dict[tuple[str, ...], int] = {}
        exact: dict[str, int] = {}
        for route in self.routes:
            qos = route.qos if route.qos is not None else default_qos
            namespace = route.pattern.namespace
            if namespace:
                wanted[namespace] = max(qos, wanted.get(namespace, 0))
            else:
                exact[route.pattern.mqtt_filter] = max(qos, exact.get(route.pattern.mqtt_filter, 0))
        covering: dict[tuple[str, ...], int] = {}
        for namespace in sorted(wanted, key=len):
            outer = next((kept for kept in covering if namespace[: len(kept)] == kept), None)
            if outer is None:
                covering[namespace] = wanted[namespace]
            else:
                covering[outer] = max(covering[outer], wanted[namespace])
        found = [("/".join((*namespace, "#")), qos) for namespace, qos in covering.items()]
        return found + list(exact.items())

    @property
    def queues(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(route.queue for route in self.routes))

    @property
    def task_queues(self) -> dict[str, str]:
        return {route.task: route.queue for route in self.routes}

    @property
    def queue_pools(self) -> dict[str, WorkerPool]:
        """Each queue and the kind of worker that consumes it."""
        return {route.queue: route.pool for route in self.routes}

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
        parameter_rule=route.parameter_rule,
        pool=route.pool,
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


def load_routes(spec: str = DEFAULT_ROUTES) -> tuple[Route, ...]:
    """The routes declared at `spec` (`module:NAME`), or RouteError saying why they cannot be."""
    module_name, _, attribute = spec.partition(":")
    where = f"TASKHUB_ROUTES={spec}"
    try:
        declared = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, RouteError) as error:
        raise RouteError(f"{where}: {error}") from None
    except Exception as error:  # the module itself is broken: say how, in one line
        raise RouteError(f"{where}: {type(error).__name__}: {error}") from None
    if not isinstance(declared, list | tuple) or not all(isinstance(r, Route) for r in declared):
        raise RouteError(f"{where}: must be a list or tuple of taskhub.routes.Route")
    if not declared:
        raise RouteError(f"{where}: declares no routes")
    return tuple(declared)


def route_table(topic_prefix: str = "", spec: str = DEFAULT_ROUTES) -> RouteTable:
    """The routes declared at `spec`, checked, below `topic_prefix`."""
    return RouteTable(load_routes(spec), topic_prefix)


def routes_or_exit(settings: Settings) -> RouteTable:
    """The configured route table for an entry point: a wrong one ends the process in one line."""
    try:
        return route_table(settings.topic_prefix, settings.routes)
    except RouteError as error:
        raise SystemExit(f"taskhub: bad route table: {error}") from None
