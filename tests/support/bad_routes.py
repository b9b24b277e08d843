"""Route tables with one mistake each, for the start-error tests (TASKHUB_ROUTES=<here>:NAME)."""

from __future__ import annotations

from taskhub.payloads import CheckinTweet, SensorReading
from taskhub.routes import Route
from taskhub.topics import TopicPattern

_CHECKINS = Route(
    pattern=TopicPattern("checkins/{city}/#"),
    task="tasks.checkins.resolve_checkin",
    queue="checkins",
    payload=CheckinTweet,
)

SAME_PATTERN_TWICE = (
    _CHECKINS,
    Route(
        pattern=TopicPattern("checkins/{town}/#"),
        task="tasks.sensors.record_reading",
        queue="sensors",
        payload=SensorReading,
    ),
)

UNKNOWN_TASK = (
    _CHECKINS,
    Route(
        pattern=TopicPattern("sensors/{device_id}/reading"),
        task="tasks.sensors.record_readings",
        queue="sensors",
        payload=SensorReading,
    ),
)

MISSING_MODULE = (
    Route(
        pattern=TopicPattern("alarms/{site}"),
        task="tasks.alarms.raise_alarm",
        queue="alarms",
        payload=SensorReading,
    ),
)

NOT_ROUTES = {"checkins/#": "tasks.checkins.resolve_checkin"}
