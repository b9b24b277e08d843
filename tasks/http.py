"""One pooled HTTP client per worker process, created after fork and shared by every task in it.

urllib3 rather than httpx: httpcore's pool scans every connection for every request, which at
the hundreds of concurrent requests of a gevent worker cost 60% of the worker's CPU (py-spy,
docs/decisions.md). urllib3 keeps idle connections per host in a queue: taking one is O(1).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import urllib3

from taskhub.settings import HttpSettings
from taskhub.telemetry.worker_metrics import worker_metrics
from taskhub.worker import shape

USER_AGENT = "taskhub/0.1"
MAX_HOSTS = 32
"""Upstream hosts a process keeps pools for at once."""

_pool: urllib3.PoolManager | None = None
_pool_pid: int | None = None


class UpstreamUnreachable(Exception):
    """No answer: the connection was refused or reset, or the upstream did not answer in time."""


@dataclass(frozen=True, slots=True)
class Answer:
    """What an upstream answered, independent of the client library."""

    status: int
    headers: dict[str, str]
    """Header names in lower case."""
    body: bytes

    @property
    def is_redirect(self) -> bool:
        return self.status in (301, 302, 303, 307, 308) and "location" in self.headers

    def json(self) -> Any:
        return json.loads(self.body)


def _pool_manager(settings: HttpSettings) -> urllib3.PoolManager:
    """This process's pools; a forked pool child builds its own rather than share sockets."""
    global _pool, _pool_pid
    if _pool is None or _pool_pid != os.getpid():
        _pool = urllib3.PoolManager(
            num_pools=MAX_HOSTS,
            maxsize=settings.max_connections or shape().connections,
            block=True,  # past maxsize a request waits for a connection instead of opening more
            retries=False,
            headers={"user-agent": USER_AGENT},
        )
        _pool_pid = os.getpid()
    return _pool


THROTTLED = 429


def http_get(
    settings: HttpSettings,
    url: str,
    headers: dict[str, str],
    connect: float,
    read: float,
    host: str | None = None,
) -> Answer:
    """GET `url` once (no redirects followed, no retries); UpstreamUnreachable if no answer.
    Counted by `host` (the URL's, unless the caller already has it) and answer."""
    metrics = worker_metrics()
    host = host or urlsplit(url).netloc
    try:
        response = _pool_manager(settings).request(
            "GET",
            url,
            headers=headers,
            timeout=urllib3.Timeout(connect=connect, read=read),
            redirect=False,
            preload_content=True,
            pool_timeout=read,
        )
    except (urllib3.exceptions.HTTPError, OSError) as error:
        metrics.upstream_requests.labels(host, "error").inc()
        raise UpstreamUnreachable(f"GET {url}: {type(error).__name__}: {error}") from None
    metrics.upstream_requests.labels(host, str(response.status)).inc()
    if response.status == THROTTLED:
        metrics.upstream_throttled.labels(host).inc()
    return Answer(
        response.status,
        {name.lower(): value for name, value in response.headers.items()},
        response.data,
    )
