"""Flower's URL table as taskhub serves it: nothing answers without basic auth, and the Broker
page shows every route queue as `taskhub status` and the bridge's `/metrics` read it.

flowerconfig.py calls `install()`; Flower's option parsing runs that file before it builds its
application from `flower.urls.handlers`, so swapping entries in that list is enough.

- `/metrics` is removed: it answered without a password, and what it says is served elsewhere
  (docs/observability.md, "Flower"). `/healthcheck` asks for the password like every page.
- Flower reads queue lengths with a client chosen by the broker URL's scheme, and taskhub's
  `broker_transport` makes that scheme `taskhub.transport:Transport`: the Broker page and
  `/api/queues/length` answered 404 "broker is not supported". They also listed only the queues
  the running workers consume. Here both read `taskhub.telemetry.queues` for every route queue.
- `/api/workers` answered from a cache that Flower fills once at its start and then only on
  `?refresh=1` (mher/flower#1139): `{}` for workers started after Flower. Here it inspects the
  workers first whenever that cache is empty or lacks a worker Flower's events show alive.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Sequence
from typing import Any

import redis
from flower.api.tasks import GetQueueLengths
from flower.api.workers import ListWorkers
from flower.views import BaseHandler
from flower.views.broker import BrokerView
from flower.views.monitor import Healthcheck, Metrics
from tornado import web
from tornado.routing import URLSpec

from taskhub.settings import get_settings
from taskhub.telemetry.beats import worker_beats
from taskhub.telemetry.queues import QueueState, read_queues

REDIS_TIMEOUT_SECONDS = 2.0
"""How long a page waits for Redis before it shows the queues as unavailable."""


class AuthenticatedHealthcheck(Healthcheck):  # type: ignore[misc]
    """Flower's "OK", for a caller with the basic-auth password."""

    @web.authenticated
    async def get(self) -> None:
        await super().get()


def flower_row(state: QueueState) -> dict[str, Any]:
    """One queue in the shape Flower's Broker page and queue-length API render: Messages is the
    depth (waiting + unacked), Ready the waiting tasks, Consumers the ready workers."""
    return {
        "name": state.name,
        "messages": state.depth,
        "messages_ready": state.waiting,
        "messages_unacknowledged": state.unacked,
        "consumers": state.consumers,
    }


@functools.cache
def _broker_client() -> redis.Redis:
    """One client for the Flower process (its pool serves Flower's executor threads)."""
    return redis.Redis.from_url(
        get_settings().broker_url.get_secret_value(),
        socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
        socket_timeout=REDIS_TIMEOUT_SECONDS,
    )


class RouteQueueReader:
    """Flower's broker interface (`await queues(names)`), answered by taskhub's queue reader."""

    def __init__(self, client: redis.Redis, key_prefix: str) -> None:
        self.client = client
        self.key_prefix = key_prefix

    async def queues(self, names: Sequence[str]) -> list[dict[str, Any]]:
        def read() -> list[QueueState]:
            beats = worker_beats(self.client, self.key_prefix)
            return read_queues(self.client, list(names), beats)

        # Flower's default executor: the Redis reads must not block its event loop.
        states = await asyncio.get_running_loop().run_in_executor(None, read)
        return [flower_row(state) for state in states]


class RouteQueuesMixin(BaseHandler):  # type: ignore[misc]
    """Every route queue, read by taskhub, whichever queues the running workers consume."""

    def get_broker(self) -> RouteQueueReader:
        return RouteQueueReader(_broker_client(), get_settings().key_prefix)

    def get_active_queue_names(self) -> list[str]:
        declared = [queue.name for queue in self.capp.conf.task_queues or () if queue.name]
        consumed = {
            queue["name"]
            for info in self.application.workers.values()
            for queue in info.get("active_queues", [])
        }
        return declared + sorted(consumed - set(declared))


class RouteQueuesBrokerView(RouteQueuesMixin, BrokerView):  # type: ignore[misc]
    """Flower's Broker page, listing every route queue with its depth."""


class RouteQueueLengths(RouteQueuesMixin, GetQueueLengths):  # type: ignore[misc]
    """Flower's `/api/queues/length`, for every route queue."""


class CurrentListWorkers(ListWorkers):  # type: ignore[misc]
    """Flower's `/api/workers`, which inspects the workers before it answers from a cache that
    does not know them all; an answer from a complete cache costs no broadcast."""

    @web.authenticated
    async def get(self) -> None:
        if self._cache_lacks_workers():
            try:
                await self._inspect(self.get_argument("workername", default=None))
            except Exception as error:  # answered as Flower answers a failed `?refresh=1`
                raise web.HTTPError(503, f"Failed to update workers: {error}") from None
        await super().get()

    async def _inspect(self, workername: str | None) -> None:
        started = time.monotonic()
        await self.application.update_workers(workername=workername)
        took = time.monotonic() - started
        if self._cache_lacks_workers() and took < self.application.inspector.timeout:
            # Flower joins a request to an inspection already under way (its own at start, say),
            # which may have gone out before the worker listened. A fresh one waits the whole
            # timeout for replies, so one that ended sooner was that: ask once more.
            await self.application.update_workers(workername=workername)

    def _cache_lacks_workers(self) -> bool:
        if self.get_argument("status", default=False, type=bool):
            return False  # answered from Flower's events, not from the cache
        if self.get_argument("refresh", default=False, type=bool):
            return False  # Flower refreshes it anyway
        cached = self.application.workers
        named = self.get_argument("workername", default=None)
        if named is not None:
            return named not in cached
        events = self.application.events.state.workers
        alive = {name for name, worker in events.items() if worker.alive}
        return not cached or not alive <= set(cached)


REPLACED: dict[type, type | None] = {
    Metrics: None,
    Healthcheck: AuthenticatedHealthcheck,
    BrokerView: RouteQueuesBrokerView,
    GetQueueLengths: RouteQueueLengths,
    ListWorkers: CurrentListWorkers,
}
"""Flower's handler -> taskhub's, or None to drop the route (its path then answers 404)."""


def _handler_class(entry: Any) -> type:
    return entry.handler_class if isinstance(entry, URLSpec) else entry[1]  # type: ignore[no-any-return]


def _with_handler(entry: Any, handler: type) -> Any:
    if isinstance(entry, URLSpec):
        return URLSpec(entry.regex.pattern, handler, entry.kwargs, entry.name)
    return (entry[0], handler, *entry[2:])


def install(table: list[Any] | None = None) -> None:
    """Swap taskhub's handlers into Flower's URL table (`flower.urls.handlers` by default).

    Raises RuntimeError when a handler to replace is missing: a Flower upgrade moved it, and
    serving on would put `/metrics` back without a password.
    """
    if table is None:
        from flower import urls

        table = urls.handlers
    present = {_handler_class(entry) for entry in table}
    missing = [original.__name__ for original in REPLACED if original not in present]
    if missing:
        raise RuntimeError(
            f"taskhub.flower_views: Flower's URL table has no {', '.join(missing)}: this Flower "
            "is not a version taskhub adapts (see docs/observability.md, Flower)"
        )
    rebuilt = []
    for entry in table:
        original = _handler_class(entry)
        if original not in REPLACED:
            rebuilt.append(entry)
        elif (replacement := REPLACED[original]) is not None:
            rebuilt.append(_with_handler(entry, replacement))
    table[:] = rebuilt
