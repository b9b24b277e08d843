"""A route table whose pattern breaks the MQTT rules: importing it fails, as a typo would."""

from __future__ import annotations

from taskhub.payloads import CheckinTweet
from taskhub.routes import Route
from taskhub.topics import TopicPattern

ROUTES = (
    Route(
        pattern=TopicPattern("checkins/#/{city}"),
        task="tasks.checkins.resolve_checkin",
        queue="checkins",
        payload=CheckinTweet,
    ),
)
