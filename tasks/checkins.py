"""Resolve a check-in tweet: expand its 4sq short link, fetch the venue, store the result.

Both HTTP calls are slow and fail now and then; transient failures retry with backoff, while a
link or venue that does not exist fails at once.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from typing import Any

import httpx
from celery import Task
from redis.client import Pipeline

from taskhub.celery import app
from taskhub.payloads import CheckinTweet
from taskhub.settings import get_settings
from tasks.http import http_client
from tasks.idempotency import Writes, run_once
from tasks.store import save_effect

EFFECT_KIND = "checkin"
RESOLVED_STREAM_MAXLEN = 1_000_000
logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request drowns the log
_VENUE_PATH = re.compile(r"/v/(?:[^/]+/)?([A-Za-z0-9]{6,32})/?$")


class UpstreamUnavailable(Exception):
    """An upstream service answered 5xx or 429: worth retrying later."""


class CheckinNotResolvable(Exception):
    """The link or venue does not exist: retrying will not help."""


def _check_status(response: httpx.Response, what: str) -> None:
    if response.status_code >= 500 or response.status_code == 429:
        raise UpstreamUnavailable(f"{what} answered {response.status_code}")
    if response.status_code == 404:
        raise CheckinNotResolvable(f"{what} answered 404")


def expand_short_link(client: httpx.Client, code: str) -> str:
    """HTTP call 1: the short link's redirect target names the venue; return the venue id."""
    settings = get_settings().http
    response = client.get(f"{settings.shortlink_base_url}/{code}")
    _check_status(response, f"short link {code}")
    location = response.headers.get("location")
    if not response.is_redirect or not location:
        raise CheckinNotResolvable(f"short link {code} did not redirect ({response.status_code})")
    match = _VENUE_PATH.search(httpx.URL(location).path)
    if match is None:
        raise CheckinNotResolvable(f"short link {code} redirects to {location}, not a venue")
    return match.group(1)


def fetch_venue(client: httpx.Client, venue_id: str) -> dict[str, Any]:
    """HTTP call 2: the venue document from the venue API."""
    settings = get_settings().http
    response = client.get(f"{settings.venue_api_base_url}/venues/{venue_id}")
    _check_status(response, f"venue {venue_id}")
    response.raise_for_status()
    venue = response.json().get("response", {}).get("venue")
    if not isinstance(venue, dict):
        raise CheckinNotResolvable(f"venue {venue_id}: the answer holds no venue")
    return venue


@app.task(
    bind=True,
    name="tasks.checkins.resolve_checkin",
    autoretry_for=(UpstreamUnavailable, httpx.TransportError),
    retry_backoff=True,
    retry_backoff_max=int(get_settings().tasks.retry_backoff_max),
    retry_jitter=True,
    max_retries=get_settings().tasks.max_retries,
)
def resolve_checkin(self: Task, tweet: dict[str, Any], city: str | None = None) -> dict[str, Any]:
    """Resolve `tweet` to its venue; store it under the tweet's id and announce it, once."""
    checkin = CheckinTweet.model_validate(tweet)

    def compute() -> tuple[dict[str, Any], Writes]:
        client = http_client(get_settings().http)
        venue_id = expand_short_link(client, checkin.short_code)
        venue = fetch_venue(client, venue_id)
        result = {
            "tweet_id": checkin.id,
            "user": checkin.user.screen_name,
            "city": city,
            "short_code": checkin.short_code,
            "venue": venue,
            "task_id": self.request.id,
            "retries": self.request.retries,
            "resolved_at": datetime.now(UTC).isoformat(),
        }

        def writes(pipe: Pipeline) -> None:
            save_effect(pipe, EFFECT_KIND, checkin.id, result)
            pipe.xadd(
                resolved_stream(),
                {"tweet_id": checkin.id, "task_id": str(self.request.id)},
                maxlen=RESOLVED_STREAM_MAXLEN,
                approximate=True,
            )

        return result, writes

    return run_once(self.name, str(self.request.id), f"{EFFECT_KIND}:{checkin.id}", compute)


def resolved_stream() -> str:
    """The stream announcing each resolved check-in once, for whatever consumes them."""
    return f"{get_settings().key_prefix}:checkins:resolved"
