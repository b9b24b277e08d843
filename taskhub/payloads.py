"""The payload models: what a message on each route must look like once decoded.

Shared by the bridge (validate at the edge) and the tasks (trust, but re-check `.delay()` input).
A payload a task refuses is an `InvalidPayload`, in words (taskhub/task_payload.py).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails

SHORT_LINK = re.compile(r"(?:https?://)?4sq\.com/([A-Za-z0-9]{4,16})\b")
"""A foursquare short link inside tweet text; group 1 is the short code."""

MAX_PROBLEMS_NAMED = 5
"""An InvalidPayload names this many of a payload's problems and counts the rest."""

TweetId = Annotated[str, Field(pattern=r"^[0-9]{1,20}$")]


class Payload(BaseModel):
    """Base of every payload model: unknown fields are kept, types are checked."""

    model_config = ConfigDict(extra="allow", frozen=True, str_max_length=100_000)


class InvalidPayload(ValueError):
    """A task's payload does not satisfy the task's model. One line: the task, then each field
    with its reason, e.g. `tasks.checkins.resolve_checkin: tweet.text: text carries no ...`.

    Its only argument is that line, so Celery's JSON result backend rebuilds it for `.get()` in
    the caller (it stores a failure as type, module and args; pydantic's ValidationError cannot be
    rebuilt from its args and reached callers as `Exception(...ValidationError([]))`). This module
    is imported wherever the Celery app is, which the rebuild needs.
    """

    @classmethod
    def of(cls, task: str, argument: str, error: ValidationError) -> InvalidPayload:
        problems = error.errors(include_url=False, include_input=False)
        named = "; ".join(_problem(argument, problem) for problem in problems[:MAX_PROBLEMS_NAMED])
        more = len(problems) - MAX_PROBLEMS_NAMED
        return cls(f"{task}: {named}" + (f" (+{more} more)" if more > 0 else ""))


def _problem(argument: str, problem: ErrorDetails) -> str:
    where = ".".join([argument, *(str(part) for part in problem["loc"])])
    # A validator's own ValueError says it best; pydantic prefixes its message with "Value error, ".
    raised = problem.get("ctx", {}).get("error")
    reason = str(raised) if isinstance(raised, Exception) else problem["msg"]
    return f"{where}: {' '.join(reason.split())}"


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
