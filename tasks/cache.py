"""A cache in Redis shared by every worker: short link -> venue id, and venue documents.

A short link always names the same venue, so that entry never goes stale (it is kept for
SHORTLINK_TTL to bound memory). A venue document is fresh for the API's `max-age` (or
TASKHUB_HTTP__CACHE_TTL), then kept a while longer with its ETag so that a conditional request
can renew it without a body. Hits and misses are counted per kind, in `<prefix>:stats:cache`.
"""

from __future__ import annotations

import functools
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from redis.client import Pipeline

from taskhub import redis_keys, tracing
from taskhub.settings import get_settings
from taskhub.telemetry.worker_metrics import worker_metrics
from tasks.store import store_redis

SHORTLINK_TTL = 30 * 86_400
"""Seconds a short link's venue id is kept: it never changes, the bound is for memory."""
STALE_KEPT_SECONDS = 86_400
"""Seconds a venue document outlives its freshness, for a conditional request to renew it."""
LOOKUP_SPAN = "cache.lookup"
KIND = "taskhub.cache.kind"
HIT = "taskhub.cache.hit"
"""True when the cache held an entry (for a venue, fresh or not: a stale one is renewed)."""

Found = TypeVar("Found")


def _key(kind: str, identity: str) -> str:
    return redis_keys.cache(get_settings().key_prefix, kind, identity)


def stats_key() -> str:
    return redis_keys.cache_stats(get_settings().key_prefix)


_pending: Counter[str] = Counter()
"""Counts not yet in Redis: they ride along with the next effect a task commits in this process,
which saves a round trip per lookup."""


def count(kind: str, outcome: str) -> None:
    """Count a `hit`, `miss` or `revalidated` for `kind` (shortlink, venue), in Redis for
    `taskhub` stats and in this worker's metrics."""
    _pending[f"{kind}:{outcome}"] += 1
    worker_metrics().cache.labels(outcome).inc()


def flush_counts(pipe: Pipeline) -> None:
    """Queue the pending counts on `pipe` (a task's commit) and forget them here."""
    for field, n in _pending.items():
        pipe.hincrby(stats_key(), field, n)
    _pending.clear()


def _lookup(kind: str) -> Callable[[Callable[[str], Found]], Callable[[str], Found]]:
    """A cache read that is a span of its own when tracing is on (docs/tracing.md)."""

    def decorate(read: Callable[[str], Found]) -> Callable[[str], Found]:
        @functools.wraps(read)
        def lookup(identity: str) -> Found:
            if not tracing.enabled():
                return read(identity)
            attributes = {KIND: kind}
            with tracing.tracer().start_as_current_span(LOOKUP_SPAN, attributes=attributes) as span:
                found = read(identity)
                span.set_attribute(HIT, found is not None)
                return found

        return lookup

    return decorate


@_lookup("shortlink")
def cached_venue_id(code: str) -> str | None:
    venue_id = store_redis().get(_key("shortlink", code))
    count("shortlink", "hit" if venue_id is not None else "miss")
    if venue_id is None:
        return None
    return venue_id if isinstance(venue_id, str) else venue_id.decode()


def remember_venue_id(code: str, venue_id: str) -> None:
    store_redis().set(_key("shortlink", code), venue_id, ex=SHORTLINK_TTL)


@dataclass(frozen=True, slots=True)
class CachedVenue:
    document: dict[str, Any]
    etag: str | None
    fresh_until: float

    @property
    def fresh(self) -> bool:
        return time.time() < self.fresh_until


@_lookup("venue")
def cached_venue(venue_id: str) -> CachedVenue | None:
    raw = store_redis().get(_key("venue", venue_id))
    if raw is None:
        return None
    entry = json.loads(raw)
    return CachedVenue(entry["document"], entry.get("etag"), float(entry["fresh_until"]))


def remember_venue(
    venue_id: str, document: dict[str, Any], etag: str | None, max_age: float | None
) -> None:
    fresh = get_settings().http.cache_ttl if max_age is None else max_age
    entry = {"document": document, "etag": etag, "fresh_until": time.time() + fresh}
    store_redis().set(
        _key("venue", venue_id), json.dumps(entry), ex=int(fresh) + STALE_KEPT_SECONDS
    )
