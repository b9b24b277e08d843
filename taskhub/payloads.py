"""The payload models: what a message on each route must look like once decoded.

Shared by the bridge (validate at the edge) and the tasks (trust, but re-check `.delay()` input).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

SHORT_LINK = re.compile(r"(?:https?://)?4sq\.com/([A-Za-z0-9]{4,16})\b")
"""A foursquare short link inside tweet text; group 1 is the short code."""

TweetId = Annotated[str, Field(pattern=r"^[0-9]{1,20}$")]


class Payload(BaseModel):
    """Base of every payload model: unknown fields are kept, types are checked."""

    model_config = ConfigDict(extra="allow", frozen=True, str_max_length=100_000)


class TweetUser(Payload):
    screen_name: Annotated[str, Field(min_length=1, max_length=50)]


class CheckinTweet(Payload):
    """A tweet announcing a foursquare check-in, as the feed publishes it."""

    id: TweetId
    text: Annotated[str, Field(min_length=1, max_length=1000)]
    user: TweetUser
    created_at: datetime
    lang: str | None = None

    @field_validator("text")
    @classmethod
    def _has_short_link(cls, text: str) -> str:
        if SHORT_LINK.search(text) is None:
            raise ValueError("text carries no 4sq.com short link")
        return text

    @property
    def short_code(self) -> str:
        match = SHORT_LINK.search(self.text)
        assert match is not None  # guaranteed by the validator
        return match.group(1)


class SensorReading(Payload):
    """One reading from a device; the device id comes from the topic.

    `seq` counts readings within one boot and starts again when the device restarts. `boot` says
    which boot: a number the device raises at every restart (a boot counter kept in flash, or the
    boot time in Unix seconds). A device that sends no `boot` is ordered by `ts` (see
    tasks/sensors.py and docs/delivery.md, "Sensor readings").
    """

    seq: Annotated[int, Field(ge=0)]
    value: float
    ts: datetime
    boot: Annotated[int, Field(ge=0)] | None = None
