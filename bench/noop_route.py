"""The latency benchmark's route table: the project's routes plus a no-op task on its own queue.

`TASKHUB_ROUTES=bench.noop_route:ROUTES` puts the bridge and the worker on it.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from taskhub.payloads import Payload
from taskhub.routes import ROUTES as PROJECT_ROUTES
from taskhub.routes import Route
from taskhub.topics import TopicPattern

ROUTES_SPEC = "bench.noop_route:ROUTES"
QUEUE = "latency"


def latencies_key(source: str) -> str:
    """Where the no-op task notes each ping's latency, per bridge and round."""
    return f"bench:latency:{source}"


class Ping(Payload):
    seq: Annotated[int, Field(ge=0)]
    sent_at: float
    """time.time() when the publisher sent it."""


ROUTES = (
    *PROJECT_ROUTES,
    Route(
        pattern=TopicPattern("latency/{source}"), task="bench.noop.ping", queue=QUEUE, payload=Ping
    ),
)
