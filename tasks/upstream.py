"""Calling an upstream host the way every worker has agreed to: through its breaker, within its
shared rate limit, never past the task's deadline; a 429 pauses the host for everyone.
"""

from __future__ import annotations

import email.utils
import time
from urllib.parse import urlsplit

from taskhub.deferral import Deferred
from taskhub.settings import get_settings
from taskhub.task import Task
from tasks.breaker import Breaker
from tasks.http import Answer, UpstreamUnreachable, http_get
from tasks.ratelimit import host_rate_limit

DEFAULT_RETRY_AFTER = 1.0
"""Seconds to pause a host that answered 429 without saying for how long."""
MIN_TIMEOUT = 0.05


class UpstreamUnavailable(Exception):
    """An upstream service answered 5xx: worth retrying later (it spends a retry)."""


class UpstreamTask(Task):
    """The base of a task that calls upstream hosts and retries their transient failures:
    TASKHUB_TASKS__MAX_RETRIES times, backing off at most TASKHUB_TASKS__RETRY_BACKOFF_MAX.

    Read from settings when Celery asks (as it builds the task, and at each retry), not in the
    decorator: importing a task module must read no settings."""

    @property
    def max_retries(self) -> int:
        return get_settings().tasks.max_retries

    @property
    def retry_backoff_max(self) -> int:
        return int(get_settings().tasks.retry_backoff_max)


def get(url: str, *, deadline: float, headers: dict[str, str] | None = None) -> Answer:
    """GET `url` as every worker agreed for its host. `deadline` is a `time.monotonic()` time.

    Raises Deferred (the host is paused, its breaker is open, or its rate limit has a long line),
    UpstreamUnavailable (5xx) or UpstreamUnreachable (timeouts, refused connections).
    """
    settings = get_settings().http
    host = urlsplit(url).netloc
    policy = settings.policy(host)
    breaker = Breaker(host, policy)
    breaker.admit()
    if policy.rate_limit:
        host_rate_limit().acquire(host, policy.rate_limit, deadline)
    remaining = deadline - time.monotonic()
    connect = max(MIN_TIMEOUT, min(settings.connect_timeout, remaining))
    read = max(MIN_TIMEOUT, min(settings.read_timeout, remaining))
    try:
        response = http_get(settings, url, headers or {}, connect, read, host=host)
    except UpstreamUnreachable:
        breaker.failed()
        raise
    if response.status == 429:
        wait = retry_after(response)
        breaker.pause(wait)
        raise Deferred(wait, f"{host} answered 429, Retry-After {wait:g}s")
    if response.status >= 500:
        breaker.failed()
        raise UpstreamUnavailable(f"{url} answered {response.status}")
    breaker.succeeded()
    return response


def retry_after(response: Answer) -> float:
    """Seconds the `Retry-After` header asks for (delta or HTTP date); a default without one."""
    value = response.headers.get("retry-after", "").strip()
    if value.isdigit():
        return max(float(value), DEFAULT_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return DEFAULT_RETRY_AFTER
    return max(DEFAULT_RETRY_AFTER, when.timestamp() - time.time())


def max_age(response: Answer) -> float | None:
    """The `max-age` of a `Cache-Control` header, if it names one."""
    for directive in response.headers.get("cache-control", "").split(","):
        name, _, value = directive.strip().partition("=")
        if name.lower() == "max-age" and value.isdigit():
            return float(value)
    return None
