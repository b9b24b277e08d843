"""A route table as an operator would fix it after reading the dead letters: TASKHUB_ROUTES points
here in the replay tests. One model now reads values sent with a unit, and a new route takes the
topic a firmware update started using.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import field_validator

from taskhub.payloads import SensorReading
from taskhub.routes import ROUTES, Route
from taskhub.topics import TopicPattern

_WITH_UNIT = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*[A-Za-z%°]+\s*$")


class ReadingWithUnit(SensorReading):
    """A reading whose value may carry a unit: `"21.5 C"` reads as 21.5."""

    @field_validator("value", mode="before")
    @classmethod
    def _strip_unit(cls, value: Any) -> Any:
        if isinstance(value, str) and (found := _WITH_UNIT.match(value)):
            return float(found.group(1))
        return value


def _fixed(route: Route) -> Route:
    if route.task != "tasks.sensors.record_reading":
        return route
    return Route(pattern=route.pattern, task=route.task, queue=route.queue, payload=ReadingWithUnit)


ROUTES = (
    *(_fixed(route) for route in ROUTES),
    Route(
        pattern=TopicPattern("sensors/{device_id}/readings"),
        task="tasks.sensors.record_reading",
        queue="sensors",
        payload=ReadingWithUnit,
    ),
)
