"""Resolve a check-in tweet: expand its 4sq short link, fetch the venue, store the result.

Both HTTP calls are slow and fail now and then; transient failures retry with backoff, a link or
venue that does not exist fails at once, and a host that asks to wait (rate limit, 429, open
breaker) defers the task without spending a retry (tasks/upstream.py).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from redis.client import Pipeline

from taskhub import redis_keys, tracing
from taskhub.celery import app
from taskhub.payloads import CheckinTweet
from taskhub.settings import get_settings
from taskhub.task import Task
from tasks import cache, upstream
from tasks.http import Answer, UpstreamUnreachable
from tasks.idempotency import Writes, run_once
from tasks.store import save_effect
from tasks.upstream import UpstreamTask, UpstreamUnavailable

EFFECT_KIND = "checkin"
RESOLVED_STREAM_MAXLEN = 1_000_000
_VENUE_PATH = re.compile(r"/v/(?:[^/]+/)?([A-Za-z0-9]{6,32})/?$")


class CheckinNotResolvable(Exception):
    """The link or venue does not exist: retrying will not help."""


def _check_status(response: Answer, what: str) -> None:
    if response.status == 404:
        raise CheckinNotResolvable(f"{what} answered 404")


def expand_short_link(code: str, deadline: float) -> str:
    """HTTP call 1: the short link's redirect target names the venue; return the venue id.

    A short link never changes its venue, so the answer is cached for every worker.
    """
    cached = cache.cached_venue_id(code)
    if cached is not None:
        return cached
    settings = get_settings().http
    response = upstream.get(f"{settings.shortlink_base_url}/{code}", deadline=deadline)
    _check_status(response, f"short link {code}")
    location = response.headers.get("location")
    if not response.is_redirect or not location:
        raise CheckinNotResolvable(f"short link {code} did not redirect ({response.status})")
    match = _VENUE_PATH.search(urlsplit(location).path)
    if match is None:
        raise CheckinNotResolvable(f"short link {code} redirects to {location}, not a venue")
    cache.remember_venue_id(code, match.group(1))
    return match.group(1)


def fetch_venue(venue_id: str, deadline: float) -> dict[str, Any]:
    """HTTP call 2: the venue document, from the shared cache while it is fresh, renewed with a
    conditional request when the API gave an ETag."""
    cached = cache.cached_venue(venue_id)
    if cached is not None and cached.fresh:
        cache.count("venue", "hit")
        return cached.document
    settings = get_settings().http
    headers = {}
    if settings.venue_api_key is not None:
        headers["authorization"] = settings.venue_api_key.get_secret_value()
    if cached is not None and cached.etag:
        headers["if-none-match"] = cached.etag
    response = upstream.get(
        f"{settings.venue_api_base_url}/venues/{venue_id}", deadline=deadline, headers=headers
    )
    if response.status == 304 and cached is not None:
        cache.count("venue", "revalidated")
        cache.remember_venue(venue_id, cached.document, cached.etag, upstream.max_age(response))
        return cached.document
    cache.count("venue", "miss")
    _check_status(response, f"venue {venue_id}")
    if response.status != 200:
        raise CheckinNotResolvable(f"venue {venue_id} answered {response.status}")
    venue = response.json().get("response", {}).get("venue")
    if not isinstance(venue, dict):
        raise CheckinNotResolvable(f"venue {venue_id}: the answer holds no venue")
    cache.remember_venue(venue_id, venue, response.headers.get("etag"), upstream.max_age(response))
    return venue


@app.task(
    bind=True,
    name="tasks.checkins.resolve_checkin",
    base=UpstreamTask,  # max_retries and retry_backoff_max from settings
    payload_model=CheckinTweet,  # a bad tweet fails in words at .delay() (taskhub/task_payload.py)
    autoretry_for=(UpstreamUnavailable, UpstreamUnreachable),
    retry_backoff=True,
    retry_jitter=True,
)
def resolve_checkin(self: Task, tweet: dict[str, Any], city: str | None = None) -> dict[str, Any]:
    """Resolve `tweet` to its venue; store it under the tweet's id and announce it, once."""
    checkin = CheckinTweet.model_validate(tweet)
    tracing.annotate({tracing.TWEET_ID: checkin.id})  # findable by tweet (docs/tracing.md)

    def compute() -> tuple[dict[str, Any], Writes]:
        deadline = self.deadline()
        venue_id = expand_short_link(checkin.short_code, deadline)
        venue = fetch_venue(venue_id, deadline)
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
            cache.flush_counts(pipe)
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
    return redis_keys.checkins_resolved(get_settings().key_prefix)
